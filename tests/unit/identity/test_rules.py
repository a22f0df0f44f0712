import pytest

from contracts.events import Identifier
from identity.rules import DEFAULT_TYPE_RULES, IdentityRules, TypeRule, ordered

RULES = IdentityRules()


def ident(type: str, value: str) -> Identifier:
    return Identifier(type=type, value=value)


def test_default_type_rules() -> None:
    assert RULES.rule("member_id") == TypeRule(unique=True, cap=1)
    assert RULES.rule("wechat_unionid") == TypeRule(unique=True, cap=1)
    assert RULES.rule("company_id") == TypeRule(unique=True, cap=1)
    assert RULES.rule("email") == TypeRule(unique=False, cap=3)
    assert RULES.rule("phone").cap == 3
    assert RULES.rule("anonymous_id").cap == 50
    assert RULES.types == DEFAULT_TYPE_RULES
    assert RULES.supernode_limit == 5


def test_custom_types_get_the_custom_rule() -> None:
    assert RULES.rule("loyalty_card") == TypeRule(cap=5)
    rules = IdentityRules(custom=TypeRule(unique=True, cap=2))
    assert rules.rule("loyalty_card") == TypeRule(unique=True, cap=2)
    assert rules.rule("email") == TypeRule(cap=3)


def test_overriding_types_replaces_the_whole_table() -> None:
    rules = IdentityRules(types={"email": TypeRule(cap=1)})
    assert rules.rule("email").cap == 1
    assert rules.rule("member_id") == rules.custom


@pytest.mark.parametrize("cap", [0, -1])
def test_cap_must_be_positive(cap: int) -> None:
    with pytest.raises(ValueError, match="cap"):
        TypeRule(cap=cap)


def test_identity_rules_reject_unknown_settings() -> None:
    with pytest.raises(ValueError, match="extra"):
        IdentityRules.model_validate({"blocklists": {}})


@pytest.mark.parametrize(
    ("type", "value"),
    [
        ("member_id", "null"),
        ("member_id", "0"),
        ("member_id", "-1"),
        ("customer_id", "undefined"),
        ("anonymous_id", "anonymous"),
        ("email", "test@test.com"),
        ("email", "noreply@example.com"),
        ("device_id", "00000000-0000-0000-0000-000000000000"),
        ("member_id", "000000"),
        ("phone", "11111111"),
        ("device_id", "xxxx"),
        ("phone", "+8600000000000"),
        ("phone", "+0000000"),
        ("loyalty_card", "n/a"),
    ],
)
def test_default_junk_values_are_blocked(type: str, value: str) -> None:
    assert RULES.blocked(ident(type, value))


@pytest.mark.parametrize(
    ("type", "value"),
    [
        ("member_id", "NULL"),
        ("email", "Test@Test.COM"),
        ("anonymous_id", "Guest"),
        ("device_id", "XxXx"),
    ],
)
def test_blocking_ignores_case(type: str, value: str) -> None:
    assert RULES.blocked(ident(type, value))


@pytest.mark.parametrize(
    ("type", "value"),
    [
        ("email", "li.wei@example.com"),
        ("phone", "+8613800138000"),
        ("member_id", "M-1"),
        ("member_id", "000"),  # too short to be a repeated run
        ("member_id", "10000"),
        ("email", "test1@test.com"),
        ("loyalty_card", "nullable"),
    ],
)
def test_normal_values_are_not_blocked(type: str, value: str) -> None:
    assert not RULES.blocked(ident(type, value))


def test_extra_blocklist_entries_apply_per_type_and_ignore_case() -> None:
    rules = IdentityRules(blocklist={"email": ["Cashier@Store.cn"]})
    assert rules.blocked(ident("email", "cashier@store.cn"))
    assert rules.blocked(ident("email", "CASHIER@STORE.CN"))
    assert not rules.blocked(ident("customer_id", "cashier@store.cn"))
    assert not RULES.blocked(ident("email", "cashier@store.cn"))


def test_star_blocklist_entries_apply_to_every_type() -> None:
    rules = IdentityRules(blocklist={"*": ["DEMO"], "phone": ["+8613800000000"]})
    assert rules.blocked(ident("member_id", "demo"))
    assert rules.blocked(ident("loyalty_card", "Demo"))
    assert rules.blocked(ident("phone", "+8613800000000"))
    assert not rules.blocked(ident("member_id", "+8613800000000"))
    assert not rules.blocked(ident("member_id", "demo-1"))


def test_extra_blocklist_keeps_the_defaults() -> None:
    rules = IdentityRules(blocklist={"email": ["cashier@store.cn"]})
    assert rules.blocked(ident("email", "test@test.com"))


def test_ordered_puts_the_strongest_identifier_first() -> None:
    ids = [
        ident("anonymous_id", "a"),
        ident("company_id", "c"),
        ident("email", "e@x.com"),
        ident("loyalty_card", "L"),
        ident("device_id", "d"),
        ident("member_id", "M"),
        ident("platform_user_id", "p"),
        ident("phone", "+8613800138000"),
    ]
    assert [i.type for i in ordered(ids)] == [
        "member_id",
        "email",
        "phone",
        "platform_user_id",
        "loyalty_card",
        "company_id",
        "device_id",
        "anonymous_id",
    ]


def test_ordered_is_stable_within_a_type_and_does_not_mutate_its_input() -> None:
    ids = [ident("email", "b@x.com"), ident("member_id", "M"), ident("email", "a@x.com")]
    before = list(ids)
    assert [i.value for i in ordered(ids)] == ["M", "b@x.com", "a@x.com"]
    assert ids == before
    assert ordered([]) == []


def test_a_copy_with_another_blocklist_blocks_by_it() -> None:
    # How `cdp run --demo` adds the cashier's email to configured rules.
    base = IdentityRules(blocklist={"email": ["first@store.cn"]})
    rules = base.model_copy(update={"blocklist": {"email": ["Cashier@Store.cn"]}})
    assert rules.blocked(ident("email", "cashier@store.cn"))
    assert not rules.blocked(ident("email", "first@store.cn"))
    assert base.blocked(ident("email", "first@store.cn"))
    assert not base.blocked(ident("email", "cashier@store.cn"))
