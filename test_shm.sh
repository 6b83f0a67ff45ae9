#!/usr/bin/env bash
# test_shm.sh - check every claim of README.md against the real system.
#
# Each test starts the real processa.py and processb.py and compares what
# they do with what the kernel reports: `ipcs -m`, /proc/sysvipc/shm and the
# FIFOs on disk. No mocks.
#
# Isolation: the run gets its own ftok path (a fresh mktemp -d) and each test
# its own project id, checked to be unused, so parallel runs never collide.
# Cleanup (on any exit): kill the processes this run started, remove the
# segments at this run's keys and the shmids it recorded, and their FIFOs;
# nothing else, and never ipcrm -a.
# Waiting: on events (a log line, a segment in /proc/sysvipc/shm, a process
# ending), polled every 50 ms up to a deadline; never a sleep to synchronise.
#
# Usage: ./test_shm.sh [PATTERN]   run all tests, or those whose names match
# Output: `ok N - name` or `not ok N - name` with `# ` diagnostics, then a
# last line `N passed, N failed`. Exit status 1 if any test failed.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/test_shm.XXXXXX")
fifo_dir=/tmp/shmm-$(id -u)
deadline=30          # seconds any awaited event may take on a busy machine
passed=0 failed=0 number=0
proj=0 key=""        # this test's project id and key (see next_key)
keys=() shmids=()    # everything this run may have created, for cleanup
declare -A pid=()    # background processes by name

# --- Harness ------------------------------------------------------------------

cleanup() {
    local name id k
    for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null; done
    wait 2>/dev/null
    for k in "${keys[@]}"; do
        shmids+=("$(shmid_of "$k")")
        rm -f "$fifo_dir/$k.notify" "$fifo_dir/$k.ack"
    done
    for id in "${shmids[@]}"; do
        [[ -n $id ]] && segment_exists "$id" && ipcrm -m "$id"
    done
    rm -rf "$work"
}
trap cleanup EXIT

diag() { printf '# %s\n' "$@"; }

# must WHAT COMMAND...: run COMMAND; if it fails, say what was expected.
must() {
    "${@:2}" && return 0
    diag "expected: $1"
    return 1
}

# wait_for COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
    local until=$((SECONDS + deadline))
    until "$@"; do
        ((SECONDS < until)) || return 1
        sleep 0.05
    done
}

# next_key: give this test a project id whose key has no segment yet.
next_key() {
    proj=$((proj + 1))
    key=$(key_for "$proj")
    while [[ -n $(shmid_of "$key") ]]; do
        proj=$((proj + 1))
        key=$(key_for "$proj")
    done
    keys+=("$key")
}

# key_for PROJ: ftok(3)'s formula, from stat(1) of the ftok path.
key_for() {
    local inode device
    read -r inode device < <(stat -c '%i %d' "$work")
    printf '0x%08x' $(((($1 & 0xff) << 24) | ((device & 0xff) << 16) | (inode & 0xffff)))
}

# /proc/sysvipc/shm: key (signed decimal) shmid perms size cpid lpid nattch ...
proc_line_of_key() {
    local signed=$(($1 > 0x7fffffff ? $1 - 0x100000000 : $1))
    awk -v k="$signed" 'NR > 1 && $1 == k' /proc/sysvipc/shm
}
shmid_of() { proc_line_of_key "$1" | awk '{ print $2 }'; }
segment_exists() { awk -v id="$1" 'NR > 1 && $2 == id { found = 1 } END { exit !found }' /proc/sysvipc/shm; }

# ipcs_field KEY COLUMN: a column of the `ipcs -m` line for KEY
# (1 key, 2 shmid, 3 owner, 4 perms, 5 bytes, 6 nattch, 7 status).
ipcs_field() { ipcs -m | awk -v k="$1" -v c="$2" '$1 == k { print $c }'; }
nattch_is() { [[ $(ipcs_field "$key" 6) == "$1" ]]; }
no_segment() { [[ -z $(ipcs_field "$key" 2) ]]; }
no_fifos() { [[ ! -e $fifo_dir/$key.notify && ! -e $fifo_dir/$key.ack ]]; }

# start NAME PROGRAM ARGS...: run PROGRAM in the background with this test's
# key and the caller's stdin; stdout in $work/NAME.out, stderr in
# $work/NAME.err. Bash would give a background job /dev/null as stdin and
# SIGINT ignored, so both are set explicitly; the child closes the test's
# end of any input FIFO, or it would never see end of file.
start() {
    local name=$1 program=$2
    (
        if [[ -n ${input:-} ]]; then exec {input}>&-; fi
        exec env --default-signal=INT "$PYTHON" "$here/$program" --path "$work" \
            --proj-id "$proj" "${@:3}" >"$work/$name.out" 2>"$work/$name.err"
    ) <&0 &
    pid[$name]=$!
}

# start_reader NAME ARGS...: start processa and wait until it listens.
start_reader() {
    start "$1" processa.py "${@:2}"
    must "$1 to listen" wait_for logged "$1" "waiting for processb" || return 1
    shmids+=("$(shmid_of "$key")")
}

logged() { grep -q -- "$2" "$work/$1.err"; }
ended() { [[ -z $(ps -o stat= -p "${pid[$1]}") || $(ps -o stat= -p "${pid[$1]}") == Z* ]]; }

# finish NAME STATUS: wait for NAME to exit and check its exit status.
finish() {
    local status
    if ! wait_for ended "$1"; then
        diag "$1 did not end; its log:" && sed 's/^/#   /' "$work/$1.err"
        kill -KILL "${pid[$1]}"
    fi
    wait "${pid[$1]}"
    status=$?
    unset "pid[$1]"
    [[ $status == "$2" ]] && return 0
    diag "$1 exited with $status, expected $2; its log:"
    sed 's/^/#   /' "$work/$1.err"
    return 1
}

# open_input NAME: a FIFO for NAME's stdin, held open on fd $input so the
# test decides when input ends (exec {input}>&- closes it).
open_input() {
    rm -f "$work/$1.in"
    mkfifo "$work/$1.in"
    exec {input}<>"$work/$1.in"
}

run_test() {
    local name=$1
    [[ $name == *"$only"* || $name == test_nothing_left_behind ]] || return 0
    number=$((number + 1))
    if "$name"; then
        passed=$((passed + 1))
        echo "ok $number - ${name#test_}"
    else
        failed=$((failed + 1))
        echo "not ok $number - ${name#test_}"
    fi
    for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null; unset "pid[$name]"; done
    wait 2>/dev/null
}

# --- The reference: key, lifecycle, messages -------------------------------------

test_key_logged_equals_ipcs_and_the_ftok_formula() {
    next_key
    start_reader a || return 1
    local logged_key
    logged_key=$(sed -n 's/.*gave key \(0x[0-9a-f]*\)$/\1/p' "$work/a.err")
    must "logged key $logged_key to be the formula's $key" [ "$logged_key" == "$key" ] || return 1
    must "ipcs -m to list $key" [ -n "$(ipcs_field "$key" 1)" ] || return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

test_segment_lifecycle_seen_by_ipcs() {
    next_key
    start_reader a || return 1
    must "perms 600" [ "$(ipcs_field "$key" 4)" == 600 ] || return 1
    must "bytes 4096" [ "$(ipcs_field "$key" 5)" == 4096 ] || return 1
    must "nattch 1 with processa alone" nattch_is 1 || return 1
    open_input b
    start b processb.py <"$work/b.in"
    must "nattch 2 once processb attached" wait_for nattch_is 2 || return 1
    echo "one line" >&"$input"
    must "the line to arrive" wait_for grep -q "one line" "$work/a.out" || return 1
    # Stop processa so that it cannot end when processb leaves: nattch 1 then.
    kill -STOP "${pid[a]}"
    exec {input}>&-
    finish b 0 || return 1
    must "nattch 1 after processb left" nattch_is 1 || return 1
    kill -CONT "${pid[a]}"
    finish a 0 || return 1
    must "no segment after processa ended" no_segment || return 1
    must "no FIFOs after processa ended" no_fifos
}

test_messages_arrive_unchanged() {
    next_key
    local long
    long=$(head -c 12288 /dev/zero | tr '\0' 'x')
    printf 'hello, shared memory\n你好，共享内存\n\n%s\nno newline at the end' "$long" >"$work/in"
    printf 'Message received: %s\n' "hello, shared memory" "你好，共享内存" "" "$long" \
        "no newline at the end" >"$work/expected"
    start_reader a || return 1
    start b processb.py <"$work/in"
    finish b 0 || return 1
    finish a 0 || return 1
    must "the output to equal the input, line for line" cmp "$work/expected" "$work/a.out"
}

test_100000_piped_lines_arrive_once_in_order() {
    next_key
    seq 100000 >"$work/in"
    start_reader a || return 1
    start b processb.py <"$work/in"
    finish b 0 || return 1
    finish a 0 || return 1
    sed 's/^Message received: //' "$work/a.out" >"$work/received"
    must "the 100000 lines, once each, in order" cmp "$work/in" "$work/received"
}

test_raw_8_mib_of_random_bytes_keep_their_sha256() {
    next_key
    head -c 8M /dev/urandom >"$work/in"
    start_reader a --raw || return 1
    start b processb.py --raw <"$work/in"
    finish b 0 || return 1
    finish a 0 || return 1
    must "the same sha256" [ "$(sha256sum <"$work/in")" == "$(sha256sum <"$work/a.out")" ]
}

test_sigint_to_processa_with_processb_attached_leaves_nothing() {
    next_key
    start_reader a || return 1
    open_input b
    start b processb.py <"$work/b.in"
    must "nattch 2" wait_for nattch_is 2 || return 1
    kill -INT "${pid[a]}"
    finish a 130 || return 1
    finish b 7 || return 1
    exec {input}>&-
    must "no segment" no_segment || return 1
    must "no FIFOs" no_fifos
}

# --- Last: the run leaves nothing behind -------------------------------------------

test_nothing_left_behind() {
    local k id left=0
    for k in "${keys[@]}"; do
        id=$(shmid_of "$k")
        [[ -n $id ]] && diag "segment $id left at key $k" && left=1
        [[ -e $fifo_dir/$k.notify || -e $fifo_dir/$k.ack ]] && diag "FIFO left for $k" && left=1
    done
    return $left
}

# --- Run ------------------------------------------------------------------------

only=${1:-}
mapfile -t tests < <(sed -n 's/^\(test_[a-z0-9_]*\)() {$/\1/p' "$0")
for test in "${tests[@]}"; do
    run_test "$test"
done
echo "$passed passed, $failed failed"
((failed == 0))
