#!/usr/bin/env bash
# Install everything the platform and its tests need on a Debian machine with Python 3.11:
# Debian packages (Valkey, from bookworm-backports on Debian 12, else redis-server; Java 17 and
# Maven if missing), a virtualenv in .venv with
# the package and its dev extras, the Kafka broker's jars from Maven Central (~/.m2), and the
# console's pinned chart assets (npm, into console/vendor: the console never loads a CDN).
# With --test, also the pinned browser SDK the tests run (npm), Debian's Chromium (with a
# CJK font) that the console's browser tests drive through Playwright, Prometheus and
# promtool (Debian's prometheus), and helm built from the Go module proxy into
# ~/.cache/cdp/bin when missing (needs Go 1.24+; a few minutes on two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
tests=false
HELM_VERSION=v3.18.6
[ "${1:-}" = "--test" ] && tests=true

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if $tests; then
  command -v chromium >/dev/null || need+=(chromium)
  fc-list 2>/dev/null | grep -qi "wqy\|noto sans cjk" || need+=(fonts-wqy-zenhei)
  command -v promtool >/dev/null || need+=(prometheus)
fi
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The local Redis-protocol server: Valkey, which never refuses a script's write once the
# script has written (deploy/local/redis.py). Debian 12 has it in bookworm-backports only
# (packages there are installed only when asked for by suite); redis-server where it is not.
if ! command -v valkey-server >/dev/null; then
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  suite=()
  if [ "$codename" = bookworm ]; then
    suite=(-t bookworm-backports)
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d; then
      printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
        "Suites: bookworm-backports" "Components: main" \
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
        $sudo tee /etc/apt/sources.list.d/debian-backports.sources >/dev/null
    fi
  fi
  echo "installing Valkey (valkey-server) ${suite[*]}"
  $sudo apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${suite[@]}" valkey-server >/dev/null; then
    command -v redis-server >/dev/null ||
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    echo "Valkey could not be installed: using redis-server (see docs/operations.md, \"Redis's disk full\")" >&2
  fi
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'

echo "resolving the Kafka broker from Maven Central (jars cached in ~/.m2)"
.venv/bin/python -c "from deploy.local.kafka import classpath, KAFKA_VERSION; classpath(); print('Kafka', KAFKA_VERSION, 'ready')"

echo "installing the console's chart assets (console/vendor, pinned, from npm)"
npm ci --prefix console/vendor --no-audit --no-fund --loglevel=error

if $tests; then
  echo "installing the browser SDK the tests run (tests/sdk/browser, from npm)"
  npm ci --prefix tests/sdk/browser --no-audit --no-fund --loglevel=error
  helm_bin="$HOME/.cache/cdp/bin"  # not XDG_CACHE_HOME: CI empties that, like ~/.m2 it stays
  if ! command -v helm >/dev/null && [ ! -x "$helm_bin/helm" ]; then
    command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
    command -v go >/dev/null || { echo "helm is built with Go 1.24+: install Go first" >&2; exit 1; }
    echo "building helm $HELM_VERSION from the Go module proxy into $helm_bin (a few minutes)"
    GOFLAGS=-mod=mod GOBIN="$helm_bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
fi
