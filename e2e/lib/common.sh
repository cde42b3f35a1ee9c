# Shared helpers for e2e/cluster and e2e/smoke-upstream.sh.
# shellcheck shell=bash

E2E_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # .../e2e
REPO_ROOT=$(cd "$E2E_SRC/.." && pwd)
export REPO_ROOT

# Everything built or fetched lives here, outside the repository, keyed by component+version.
E2E_CACHE=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/csi-controller-manager}
# State and logs of one running cluster.
E2E_DIR=${E2E_DIR:-$E2E_CACHE/run}

if [[ -t 2 ]]; then _c_red=$'\e[31m' _c_grn=$'\e[32m' _c_yel=$'\e[33m' _c_off=$'\e[0m'; else _c_red='' _c_grn='' _c_yel='' _c_off=''; fi
log()  { printf '%s[e2e]%s %s\n' "$_c_grn" "$_c_off" "$*" >&2; }
warn() { printf '%s[e2e] warning:%s %s\n' "$_c_yel" "$_c_off" "$*" >&2; }
die()  { printf '%s[e2e] error:%s %s\n' "$_c_red" "$_c_off" "$*" >&2; exit 1; }

now_s() { date +%s; }

# ---------------------------------------------------------------------------------------------
# Go toolchain

require_go() {
	if ! command -v go >/dev/null 2>&1; then
		die "the Go toolchain is missing (need Go >= 1.26 to build the Kubernetes binaries).
  Install it, e.g.: curl -fsSL https://go.dev/dl/go1.26.8.linux-amd64.tar.gz | tar -C /usr/local -xz
  and add /usr/local/go/bin to PATH (Debian's golang package is too old)."
	fi
	local v
	v=$(go env GOVERSION 2>/dev/null || true)            # e.g. go1.26.8
	local minor=${v#go1.}; minor=${minor%%.*}; minor=${minor%%[!0-9]*}
	if [[ -z $minor || $minor -lt 26 ]]; then
		die "Go $v is too old: the pinned modules declare 'go 1.26.0'. Install Go >= 1.26 (https://go.dev/dl/)."
	fi
}

# Environment for every Go build: no toolchain download, static, small, reproducible.
# GOCACHE and GOMODCACHE keep Go's defaults ($HOME/.cache/go-build, $HOME/go/pkg/mod), so they
# persist between runs on the same machine.
go_env() {
	export GOTOOLCHAIN=local CGO_ENABLED=0
	export GOFLAGS="-trimpath -buildvcs=false ${E2E_EXTRA_GOFLAGS:-}"
}

# Serialize Go builds (several `cluster` invocations may race; 2 cores are shared).
with_build_lock() {
	mkdir -p "$E2E_CACHE"
	(
		flock -w 7200 9 || die "timed out waiting for $E2E_CACHE/build.lock"
		"$@"
	) 9>"$E2E_CACHE/build.lock"
}

# ---------------------------------------------------------------------------------------------
# Processes: each component runs in its own session/process group; its pid is in $E2E_DIR/pids.

pidfile() { echo "$E2E_DIR/pids/$1.pid"; }

# is_running NAME: the recorded pid is alive (and is still the process we started).
is_running() {
	local f pid want exe cmd state
	f=$(pidfile "$1")
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
	# An exited child that nobody has reaped yet still answers kill -0.
	state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null || true)
	[[ ${state%% *} != Z ]] || return 1
	# Guard against pid reuse: the process must be the recorded binary, or setsid about to
	# exec it. While the kernel execs a binary, /proc/PID/cmdline reads empty for a moment;
	# that is the process we started, not a stranger.
	want=$(cat "$E2E_DIR/pids/$1.cmd" 2>/dev/null || true)
	[[ -n $want ]] || return 0
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1 # a kernel thread: not ours
	[[ ${exe% (deleted)} == "$(readlink -f "$want")" ]] && return 0
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
	[[ -z $cmd || $cmd == *"$want"* ]]
}

# start_bg NAME BINARY ARGS...: start detached in a new session, log to $E2E_DIR/logs/NAME.log.
start_bg() {
	local name=$1; shift
	mkdir -p "$E2E_DIR/pids" "$E2E_DIR/logs"
	local logf="$E2E_DIR/logs/$name.log"
	printf '\n==== %s %s\n' "$(date -Is)" "$*" >>"$logf"
	setsid "$@" >>"$logf" 2>&1 </dev/null &
	local pid=$! i
	echo "$pid" >"$(pidfile "$name")"
	echo "$1" >"$E2E_DIR/pids/$name.cmd"
	# Wait until setsid has exec'd the binary itself, so that signals reach it, not setsid.
	local want
	want=$(readlink -f "$(command -v "$1")")
	for ((i = 0; i < 50; i++)); do
		[[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$want" ]] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
}

# stop_bg NAME: TERM the process group, then KILL after a grace period.
stop_bg() {
	local name=$1 f pid
	f=$(pidfile "$name")
	[[ -f $f ]] || return 0
	pid=$(<"$f")
	if is_running "$name"; then
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		if ! wait_gone "$pid" 100; then
			warn "$name (pid $pid) ignored SIGTERM for 10 s, killing"
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
			wait_gone "$pid" || warn "$name (pid $pid) still there 5 s after SIGKILL"
		fi
	fi
	rm -f "$f" "$E2E_DIR/pids/$name.cmd"
}

# wait_gone PID [TENTHS]: wait (up to TENTHS tenths of a second, default 50) until PID has
# exited. An exited process counts as gone at once: a child of ours is reaped here, another
# (started by an earlier command, now the init process's) is left to its reaper, which may take
# a while.
wait_gone() {
	local i state
	for ((i = 0; i < ${2:-50}; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || true)
		if [[ ${state%% *} == Z ]]; then
			wait "$1" 2>/dev/null || true
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# strays: pids of the processes this harness starts (a binary it built, or ours) that name this
# run directory in their command line, whether or not a pid file still records them (a pid file
# lost to 'down --purge' or to a crash in the middle of 'up').
strays() {
	local p exe cmd
	for p in $(pgrep -f -- "$E2E_DIR/" || true); do
		[[ $p == "$$" || $p == "$BASHPID" ]] && continue
		exe=$(readlink "/proc/$p/exe" 2>/dev/null) || continue
		exe=${exe% (deleted)}
		case $exe in
		"$E2E_CACHE"/bin/* | "$REPO_ROOT"/target/* | "$(readlink -f "${OURS_BIN:-/nonexistent}")") ;;
		*) continue ;;
		esac
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
		[[ $cmd == *"$E2E_DIR/"* ]] && echo "$p"
	done
}

# port_holder PORT: what listens on 127.0.0.1:PORT (empty when free).
port_holder() {
	if command -v ss >/dev/null 2>&1; then
		ss -Hltnp "sport = :$1" 2>/dev/null | head -n 3
	elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
		echo "(something; ss is not available to tell what)"
	fi
}

# fail_component NAME MESSAGE: print the tail of NAME's log, how it ended if it did, and exit.
# The message comes last, so that a CI log cut to its tail still says what failed.
fail_component() {
	local name=$1; shift
	local logf="$E2E_DIR/logs/$name.log" pid how="" rc=0
	pid=$(cat "$(pidfile "$name")" 2>/dev/null || true)
	if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null || [[ $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) == Z* ]]; then
		# Our own child (started by start_bg in this shell): its exit status is still ours to read.
		wait "$pid" 2>/dev/null || rc=$?
		if ((rc > 128)); then how=" (killed by signal $((rc - 128)))"; elif ((rc)); then how=" (exit status $rc)"; fi
	elif [[ -n $pid ]]; then
		how=" (pid $pid: exe '$(readlink "/proc/$pid/exe" 2>&1)', cmdline '$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>&1)')"
	fi
	if [[ -f $logf ]]; then
		printf -- '----- last 40 lines of %s -----\n' "$logf" >&2
		tail -n 40 "$logf" >&2
		printf -- '-----\n' >&2
	fi
	printf '%s[e2e] error:%s %s%s\n' "$_c_red" "$_c_off" "$*" "$how" >&2
	exit 1
}

# wait_until NAME TIMEOUT_S CMD...: poll CMD until it succeeds; fail with NAME's log tail if
# the process dies or the timeout passes.
wait_until() {
	local name=$1 timeout=$2; shift 2
	local deadline=$(($(now_s) + timeout))
	until "$@" >/dev/null 2>&1; do
		if [[ -f $(pidfile "$name") ]] && ! is_running "$name"; then
			fail_component "$name" "$name exited before becoming healthy"
		fi
		if (($(now_s) >= deadline)); then
			fail_component "$name" "$name did not become healthy within ${timeout}s"
		fi
		sleep 0.3
	done
}

# check_port NAME PORT: fail clearly if something else listens on 127.0.0.1:PORT.
check_port() {
	local name=$1 port=$2 who
	who=$(port_holder "$port")
	[[ -z $who ]] && return 0
	die "port $port needed by $name is already in use:
$who
  Stop that process, or choose another port (see 'e2e/cluster help' for the *_PORT variables)."
}
