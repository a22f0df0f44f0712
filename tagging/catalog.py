"""The tag catalog: tags as reviewed data (``tagging/catalog/*.yaml``), checked and compiled.

Loading fails with every problem found, each naming the tag id (and the rule position for
rule errors), so processors refuse to start on an invalid catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from tagging import compiled
from tagging.compiled import Evaluate
from tagging.facts import BUILTIN, DECLARABLE
from tagging.rules import Clock, Facts, Kind, Parsed, RuleError, Test, compile_node, parse

CATEGORIES = (
    "demographics",
    "value",
    "tier",
    "lifecycle",
    "channel",
    "behaviour",
    "service",
    "satisfaction",
    "loyalty",
    "care",
    "b2b",
    "consent",
)
#: Each category's name in English and Chinese, as consoles and reports show it.
CATEGORY_NAMES: dict[str, tuple[str, str]] = {
    "demographics": ("Demographics", "人口属性"),
    "value": ("Value", "价值"),
    "tier": ("Tier", "客户等级"),
    "lifecycle": ("Lifecycle", "生命周期"),
    "channel": ("Channel", "渠道"),
    "behaviour": ("Behaviour", "行为偏好"),
    "service": ("Service", "服务"),
    "satisfaction": ("Satisfaction", "满意度"),
    "loyalty": ("Loyalty", "会员忠诚"),
    "care": ("Care", "关怀"),
    "b2b": ("B2B", "企业客户"),
    "consent": ("Consent", "授权同意"),
}
DEFAULT_DIR = Path(__file__).parent / "catalog"
_REQUIRED = ("id", "name_en", "name_zh", "category", "description", "rule")
_OPTIONAL = ("examples",)


class CatalogError(ValueError):
    """An invalid catalog: every problem, one per line, each naming its tag."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid tag catalog:\n- " + "\n- ".join(problems))


@dataclass
class Tag:
    """One tag: its description, its checked rule and what that rule depends on."""

    id: str
    name_en: str
    name_zh: str
    category: str
    description: str
    rule: str
    parsed: Parsed
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    bit: int = 0
    test: Test = field(default=lambda f, c: False, repr=False)
    #: Facts read by the rule and by the tags it references, transitively.
    reads: frozenset[str] = frozenset()
    timers: frozenset[tuple[str, int]] = frozenset()
    monthly: frozenset[str] = frozenset()
    #: Changes when this rule or a rule it references changes (triggers a backfill).
    fingerprint: str = ""

    @property
    def timed(self) -> bool:
        """True when the tag can change with time alone."""
        return bool(self.timers or self.monthly)

    def describe(self) -> dict[str, Any]:
        """The tag as the API and CLI show it."""
        return {
            "id": self.id,
            "name_en": self.name_en,
            "name_zh": self.name_zh,
            "category": self.category,
            "description": self.description,
            "rule": self.rule,
            "reads": sorted(self.reads),
            "timed": self.timed,
        }


@dataclass(frozen=True)
class Selection:
    """Some tags of a catalog: their bitmap and their tests in evaluation order."""

    tags: list[Tag]
    mask: int
    #: The selected tags compiled into one function (tagging/compiled.py).
    fn: Evaluate


class Catalog:
    """All tags, compiled, with dependency indexes for incremental and timed evaluation."""

    def __init__(self, tags: list[Tag], declared: dict[str, Kind], zone: ZoneInfo) -> None:
        self.tags = tags
        self.by_id = {t.id: t for t in tags}
        self.declared = declared
        self.zone = zone
        self._by_fact: dict[str, list[Tag]] = {}
        for tag in tags:
            for fact in tag.reads:
                self._by_fact.setdefault(fact, []).append(tag)
        self.timed = [t for t in tags if t.timed]
        self._timers = sorted({timer for t in tags for timer in t.timers})
        self._monthly = sorted({name for t in tags for name in t.monthly})
        self.bind({t.id: n for n, t in enumerate(tags)})

    def bind(self, ordinals: dict[str, int]) -> None:
        """Place each tag at its stored ordinal in profile bitmaps."""
        for tag in self.tags:
            tag.bit = ordinals[tag.id]
        self.by_bit = {t.bit: t for t in self.tags}
        #: bit -> (place in catalog order, tag id), for ``ids``.
        self._placed = {t.bit: (n, t.id) for n, t in enumerate(self.tags)}
        #: The bits of every tag of this catalog.
        self.known = self.mask(self.tags)
        self._selections: dict[frozenset[str] | None, Selection] = {}
        self._everything = self._compiled(self.tags)
        self.timed_selection = self._compiled(self.timed)

    def selection(self, tags: list[Tag]) -> Selection:
        """``tags`` ready for ``run``.

        The catalog's own tags run the function compiled for all of them, masked to theirs,
        as ``select`` does: compiling a subset costs ~2 ms per 30 tags, and a backfill asked
        for one per step (it took ~45% of a stream process's CPU while it ran). Tags that are
        not the catalog's (a rule being tried) are compiled.
        """
        if all(self.by_id.get(t.id) is t for t in tags):
            return Selection(tags, self.mask(tags), self._everything.fn)
        return self._compiled(tags)

    def _compiled(self, tags: list[Tag]) -> Selection:
        return Selection(tags, self.mask(tags), compiled.build(tags, self.by_id))

    def clock(self, now: Any) -> Clock:
        """The evaluation clock for instant ``now`` in the catalog's time zone."""
        return Clock.at(now, self.zone)

    def select(self, facts_changed: set[str] | frozenset[str] | None) -> Selection:
        """The tags a change of ``facts_changed`` can affect (None: all), ready to run.

        The selection runs the function compiled for all tags and keeps the bits of the
        affected ones: a feed's shapes of change (every set of channels, event types and trait
        names a profile's batch brings) are too many to compile one function each (~2 ms for
        30 tags), while evaluating all 238 takes ~16 us. The mask is cached per shape.
        """
        if facts_changed is None:
            return self._everything
        key = frozenset(facts_changed)
        found = self._selections.get(key)
        if found is None:
            tags = self.affected(facts_changed)
            found = Selection(tags, self.mask(tags), self._everything.fn)
            if len(self._selections) < 10_000:
                self._selections[key] = found
        return found

    @staticmethod
    def run(facts: Facts, clock: Clock, selection: Selection) -> int:
        """The bitmap of the selected tags that hold."""
        return selection.fn(facts, clock.now_ms, clock.month) & selection.mask

    def affected(self, facts_changed: set[str] | frozenset[str] | None) -> list[Tag]:
        """Tags whose value may change when ``facts_changed`` change (None: all tags)."""
        if facts_changed is None:
            return self.tags
        seen: dict[str, Tag] = {}
        for fact in facts_changed:
            for tag in self._by_fact.get(fact, ()):
                seen[tag.id] = tag
        return list(seen.values())

    def evaluate(self, facts: Facts, clock: Clock, tags: Iterable[Tag] | None = None) -> int:
        """Return the bitmap (as an int) of the tags in ``tags`` (default all) that hold."""
        chosen = self.select(None) if tags is None else self.selection(list(tags))
        return self.run(facts, clock, chosen)

    @staticmethod
    def mask(tags: Iterable[Tag]) -> int:
        """The bitmap of ``tags``."""
        out = 0
        for tag in tags:
            out |= 1 << tag.bit
        return out

    def due(self, facts: Facts, clock: Clock) -> int | None:
        """The next instant (ms) at which a timed tag of this profile may change, if any."""
        best: int | None = None
        now = clock.now_ms
        for name, span in self._timers:
            v = facts.get(name)
            if v is not None and v + span > now and (best is None or v + span < best):
                best = v + span
        if any(facts.get(name) is not None for name in self._monthly):
            nxt = clock.next_month_ms
            best = nxt if best is None else min(best, nxt)
        return best

    def ids(self, bitmap: int) -> list[str]:
        """The ids of the tags set in ``bitmap``, in catalog order (bits of no tag of the
        catalog are ignored).

        Walks the set bits only (a profile has ~30 of ~240): every profile read and history
        snapshot names its tags, and testing each tag's bit took ~5% of the history's CPU.
        """
        bitmap &= self.known
        placed = self._placed
        found = []
        while bitmap:
            low = bitmap & -bitmap
            found.append(placed[low.bit_length() - 1])
            bitmap ^= low
        found.sort()
        return [tag_id for _, tag_id in found]


def _declared(raw: dict[str, Any], problems: list[str]) -> dict[str, Kind]:
    out: dict[str, Kind] = {}
    for name, kind in (raw or {}).items():
        if not isinstance(name, str) or not name.startswith(DECLARABLE):
            problems.append(f"field {name!r}: declared fields start with {', '.join(DECLARABLE)}")
            continue
        try:
            out[name] = Kind(kind)
        except ValueError:
            kinds = ", ".join(k.value for k in Kind)
            problems.append(f"field {name!r}: unknown kind {kind!r} (one of {kinds})")
    return out


def _entries(
    documents: list[tuple[str, dict[str, Any]]], problems: list[str]
) -> list[dict[str, Any]]:
    entries = []
    for source, doc in documents:
        for n, entry in enumerate(doc.get("tags") or []):
            if not isinstance(entry, dict):
                problems.append(f"{source} tag #{n + 1}: not a mapping")
                continue
            entry = dict(entry, _source=source)
            entries.append(entry)
    return entries


def _check_entry(entry: dict[str, Any], seen: set[str], problems: list[str]) -> bool:
    tag_id = entry.get("id")
    where = f"tag {tag_id!r} ({entry['_source']})"
    ok = True
    for key in _REQUIRED:
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            problems.append(f"{where}: missing or empty {key!r}")
            ok = False
    unknown = set(entry) - set(_REQUIRED) - set(_OPTIONAL) - {"_source"}
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
        ok = False
    if ok and entry["category"] not in CATEGORIES:
        problems.append(f"{where}: unknown category {entry['category']!r}")
        ok = False
    if ok and tag_id in seen:
        problems.append(f"{where}: duplicate id")
        ok = False
    seen.add(str(tag_id))
    return ok


def build(documents: list[tuple[str, dict[str, Any]]]) -> Catalog:
    """Check and compile catalog ``documents`` ((source name, parsed YAML) pairs)."""
    problems: list[str] = []
    declared: dict[str, Kind] = {}
    zone_name = "Asia/Shanghai"
    for source, doc in documents:
        if not isinstance(doc, dict):
            problems.append(f"{source}: not a mapping")
            continue
        declared.update(_declared(doc.get("fields") or {}, problems))
        zone_name = doc.get("timezone", zone_name)
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"timezone {zone_name!r} is unknown")
        zone = ZoneInfo("UTC")
    fields = {**BUILTIN, **declared}
    tags: list[Tag] = []
    seen: set[str] = set()
    for entry in _entries([(s, d) for s, d in documents if isinstance(d, dict)], problems):
        if not _check_entry(entry, seen, problems):
            continue
        try:
            parsed = parse(entry["id"], entry["rule"], fields)
        except RuleError as err:
            problems.append(str(err))
            continue
        tags.append(
            Tag(
                id=entry["id"],
                name_en=entry["name_en"],
                name_zh=entry["name_zh"],
                category=entry["category"],
                description=entry["description"].strip(),
                rule=entry["rule"],
                parsed=parsed,
                examples=entry.get("examples") or {},
            )
        )
    _link(tags, seen, problems)
    if problems:
        raise CatalogError(problems)
    return Catalog(tags, declared, zone)


def _link(tags: list[Tag], known: set[str], problems: list[str]) -> None:
    """Resolve tag references in dependency order; report unknown ids and cycles."""
    by_id = {t.id: t for t in tags}
    state: dict[str, str] = {}

    def visit(tag: Tag, path: list[str]) -> bool:
        mark = state.get(tag.id)
        if mark == "done":
            return True
        if mark == "active":
            problems.append(f"tag {tag.id!r}: rule references itself via {' -> '.join(path)}")
            return False
        state[tag.id] = "active"
        reads, timers, monthly = set(tag.parsed.fields), set(tag.parsed.timers), set()
        monthly |= tag.parsed.monthly
        prints = [tag.rule]
        for ref in sorted(tag.parsed.tags):
            target = by_id.get(ref)
            if target is None:
                why = "is invalid" if ref in known else "does not exist"
                problems.append(f"tag {tag.id!r}: references tag {ref!r}, which {why}")
                state[tag.id] = "done"
                return False
            if not visit(target, [*path, ref]):
                state[tag.id] = "done"
                return False
            reads |= target.reads
            timers |= target.timers
            monthly |= target.monthly
            prints.append(target.fingerprint)
        tag.reads, tag.timers, tag.monthly = frozenset(reads), frozenset(timers), frozenset(monthly)
        tag.fingerprint = hashlib.sha256("\n".join(prints).encode()).hexdigest()[:16]
        tag.test = compile_node(tag.parsed.tree, lambda ref: by_id[ref].test)
        state[tag.id] = "done"
        return True

    for tag in tags:
        visit(tag, [tag.id])


def load(directory: Path | str | None = None) -> Catalog:
    """Load every ``*.yaml`` file of ``directory`` (default: the shipped catalog)."""
    folder = Path(directory) if directory else DEFAULT_DIR
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise CatalogError([f"no *.yaml catalog files in {folder}"])
    documents = []
    problems = []
    for path in files:
        try:
            documents.append((path.name, yaml.safe_load(path.read_text(encoding="utf-8")) or {}))
        except yaml.YAMLError as err:
            problems.append(f"{path.name}: not valid YAML: {err}")
    if problems:
        raise CatalogError(problems)
    return build(documents)
