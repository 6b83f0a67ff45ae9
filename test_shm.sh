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
# The interpreter that tests run as the user nobody (as root only): it must be
# one that nobody can read, which a virtual environment in a home may not be.
PYTHON_NOBODY=${PYTHON_NOBODY:-/usr/bin/python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/test_shm.XXXXXX")
fifo_dir=${SHMM_FIFO_DIR:-/tmp/shmm-$(id -u)}
deadline=30          # seconds any awaited event may take on a busy machine
passed=0 failed=0 skipped=0 number=0
proj=0 key=""        # this test's project id and key (see next_key)
keys=() shmids=()    # everything this run may have created, for cleanup
declare -A pid=()    # background processes by name
inputs=()            # this test's ends of input FIFOs (see open_input)
made_dirs=()         # FIFO directories that this run's processes made for other users
skip_reason=""       # set by skip

# --- Harness ------------------------------------------------------------------

cleanup() {
    local name id k dir
    for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null; done
    wait 2>/dev/null
    for k in "${keys[@]}"; do
        shmids+=("$(shmid_of "$k")")
        rm -f "$fifo_dir/$k.notify" "$fifo_dir/$k.ack"
    done
    for id in "${shmids[@]}"; do
        [[ -n $id ]] && segment_exists "$id" && ipcrm -m "$id"
    done
    for dir in "${made_dirs[@]}"; do rmdir "$dir" 2>/dev/null; done # only if empty
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
segment_exists() {
    awk -v id="$1" 'NR > 1 && $2 == id { found = 1 } END { exit !found }' /proc/sysvipc/shm
}
segment_gone() { ! segment_exists "$1"; }
segment_at_key() { [[ -n $(shmid_of "$key") ]]; }

# ipcs_field KEY COLUMN: a column of the `ipcs -m` line for KEY
# (1 key, 2 shmid, 3 owner, 4 perms, 5 bytes, 6 nattch, 7 status).
ipcs_field() { ipcs -m | awk -v k="$1" -v c="$2" '$1 == k { print $c }'; }
nattch_is() { [[ $(ipcs_field "$key" 6) == "$1" ]]; }
no_segment() { [[ -z $(ipcs_field "$key" 2) ]]; }
no_fifos() { [[ ! -e $fifo_dir/$key.notify && ! -e $fifo_dir/$key.ack ]]; }

# start_command NAME COMMAND...: run COMMAND in the background with the
# caller's stdin; stdout in $work/NAME.out, stderr in $work/NAME.err. Bash
# would give a background job /dev/null as stdin, so it is passed on
# explicitly; the child closes the test's end of every input FIFO, or it
# would never see end of file.
start_command() {
    local name=$1
    : >"$work/$name.out" && : >"$work/$name.err" # now, so no poll reads an earlier run's
    (
        for held in "${inputs[@]}"; do exec {held}>&-; done
        exec "${@:2}" >"$work/$name.out" 2>"$work/$name.err"
    ) <&0 &
    pid[$name]=$!
}

# start NAME PROGRAM ARGS...: start_command for processa.py or processb.py,
# with this test's key. SIGINT and SIGQUIT are reset to their defaults: bash
# starts background jobs with them ignored, or inherits them so.
start() {
    start_command "$1" env --default-signal=INT,QUIT "$PYTHON" "$here/$2" --path "$work" \
        --proj-id "$proj" "${@:3}"
}

# start_reader NAME ARGS...: start processa and wait until it listens.
start_reader() {
    start "$1" processa.py "${@:2}"
    must "$1 to listen" wait_for logged "$1" "waiting for processb" || return 1
    shmids+=("$(shmid_of "$key")")
}

# message_gets_through READER TEXT: a processb sends one line to the processa
# named READER; both end well, and READER has printed it.
message_gets_through() {
    echo "$2" >"$work/sender.in"
    start sender processb.py <"$work/sender.in"
    finish sender 0 && finish "$1" 0 || return 1
    must "'$2' to arrive" grep -q -x "Message received: $2" "$work/$1.out"
}

# message_gets_through_input READER WRITER TEXT: WRITER, reading $input, sends
# TEXT and ends when its input does; both end well, and READER printed TEXT.
message_gets_through_input() {
    echo "$3" >&"$input"
    exec {input}>&-
    finish "$2" 0 && finish "$1" 0 || return 1
    must "'$3' to arrive" grep -q -x "Message received: $3" "$work/$1.out"
}

logged() { grep -q -- "$2" "$work/$1.err"; }
ended() { [[ -z $(ps -o stat= -p "${pid[$1]}") || $(ps -o stat= -p "${pid[$1]}") == Z* ]]; }
running() { ! ended "$1"; }
no_line_with() { ! grep -qF -- "$1" "$2"; }

# finish NAME STATUS: wait for NAME to exit and check its exit status.
finish() {
    local status
    if ! wait_for ended "$1" 2>/dev/null; then # bash may tell "Killed" while we poll
        diag "$1 did not end; its log:" && sed 's/^/#   /' "$work/$1.err"
        kill -KILL "${pid[$1]}"
    fi
    { wait "${pid[$1]}"; } 2>/dev/null # no "Killed" notices from bash
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
    inputs+=("$input")
}

# one_error NAME TEXT: NAME's stderr holds one error line, containing TEXT
# (literally), and no traceback.
one_error() {
    local err=$work/$1.err errors
    errors=$(grep -c -E '^\[Fatal\]|: error: ' "$err")
    if grep -q Traceback "$err" || [[ $errors != 1 ]] || ! grep -q -F -- "$2" "$err"; then
        diag "$1's stderr:" && sed 's/^/#   /' "$err"
        return 1
    fi
}

# skip REASON: end this test as skipped, saying why.
skip() { skip_reason=$1; }

# py CODE ARGS...: run a few lines of Python with this project's modules.
py() { PYTHONPATH=$here "$PYTHON" -c "$1" "${@:2}"; }

run_test() {
    local name=$1 status dir
    [[ $name == *"$only"* || $name == test_nothing_left_behind ]] || return 0
    number=$((number + 1))
    skip_reason=""
    "$name"
    status=$?
    if [[ -n $skip_reason ]]; then
        skipped=$((skipped + 1))
        echo "ok $number - ${name#test_} # SKIP $skip_reason"
    elif ((status == 0)); then
        passed=$((passed + 1))
        echo "ok $number - ${name#test_}"
    else
        failed=$((failed + 1))
        echo "not ok $number - ${name#test_}"
    fi
    for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null; unset "pid[$name]"; done
    { wait; } 2>/dev/null
    for held in "${inputs[@]}"; do exec {held}>&-; done
    inputs=()
    for dir in "${made_dirs[@]}"; do rmdir "$dir" 2>/dev/null; done # only if empty
    if [[ -n $global_lock_fd ]]; then exec {global_lock_fd}<&-; fi
    global_lock_fd=""
}

# global_lock: hold, until this test ends, the lock of what every run of the
# suite shares (nobody's /tmp/shmm-UID, the key 0xffffffff, the default
# key), so that two runs at once take turns there instead of colliding.
global_lock_fd=""
global_lock() {
    local lockfile=${TMPDIR:-/tmp}/test_shm.lock
    [[ -e $lockfile ]] || (umask 0 && : >>"$lockfile")
    exec {global_lock_fd}<"$lockfile"
    must "the suite's global lock within 600 s" flock -w 600 "$global_lock_fd"
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

# readme_program NAME: the Python block of README.md whose first line is "# NAME - ...".
readme_program() {
    awk -v first="# $1 - " '/^```python$/ { inside = 1; lines = ""; next }
        inside && /^```$/ { inside = 0; if (index(lines, first) == 1) printf "%s", lines; next }
        inside { lines = lines $0 "\n" }' "$here/README.md"
}

test_the_readme_s_first_program_runs_as_printed() {
    local shmid text
    mkdir "$work/first" || return 1
    readme_program writer.py >"$work/first/writer.py"
    readme_program reader.py >"$work/first/reader.py"
    must "README.md to print writer.py" [ -s "$work/first/writer.py" ] || return 1
    must "README.md to print reader.py" [ -s "$work/first/reader.py" ] || return 1
    key=$(shmm key --path "$work/first" --proj-id 0x47 -q) && keys+=("$key")
    text=$(cd "$work/first" && PYTHONPATH=$here "$PYTHON" writer.py hello, shared memory)
    must "writer.py to end well" [ $? == 0 ] || return 1
    shmid=$(ipcs_field "$key" 2) && shmids+=("$shmid")
    must "writer.py to name its shmid and key: $text" \
        [ "$text" == "shmid $shmid at key $key holds 21 bytes" ] || return 1
    must "the segment to outlive the writer, nobody attached" nattch_is 0 || return 1
    text=$(cd "$work/first" && PYTHONPATH=$here "$PYTHON" reader.py)
    must "reader.py, another process, to print what writer.py left: $text" \
        [ "$text" == "hello, shared memory" ] || return 1
    must "reader.py to have removed the segment" no_segment
}

test_segment_lifecycle_seen_by_ipcs() {
    next_key
    start_reader a || return 1
    must "perms 600" [ "$(ipcs_field "$key" 4)" == 600 ] || return 1
    must "bytes 4096" [ "$(ipcs_field "$key" 5)" == 4096 ] || return 1
    must "nattch 1 with processa alone" nattch_is 1 || return 1
    open_input b
    start b processb.py -v <"$work/b.in"
    must "nattch 2 once processb attached" wait_for nattch_is 2 || return 1
    echo "one line" >&"$input"
    must "the line to arrive" wait_for grep -q "one line" "$work/a.out" || return 1
    # processb, at the end of its input, waits for processa to take its last
    # frame: stopped, processa cannot, so both stay attached.
    kill -STOP "${pid[a]}"
    exec {input}>&-
    must "processb to wait for processa at the end of its input" wait_for logged b "sending the END frame" || return 1
    must "nattch 2 while processb waits" nattch_is 2 || return 1
    kill -CONT "${pid[a]}"
    finish b 0 && finish a 0 || return 1
    must "no segment after processa ended" no_segment || return 1
    must "no FIFOs after processa ended" no_fifos
}

# send_in SLOTS [ARGS...]: a new processa with SLOTS slots prints what a
# processb sends it from $work/in; both take ARGS (--raw, --size) and end well.
send_in() {
    next_key
    start_reader a --slots "$1" "${@:2}" || return 1
    start b processb.py "${@:2}" <"$work/in"
    finish b 0 && finish a 0
}

test_messages_arrive_unchanged_with_1_and_16_slots() {
    local long longer slots
    long=$(head -c 11904 /dev/zero | tr '\0' 'x')    # 3 times a default slot (3968)
    longer=$(head -c 158720 /dev/zero | tr '\0' 'y') # 40 times a default slot
    printf 'hello, shared memory\n你好，共享内存\n\n%s\n%s\nnot UTF-8: \xff\xfe\nno newline at the end' \
        "$long" "$longer" >"$work/in"
    printf 'Message received: %s\n' "hello, shared memory" "你好，共享内存" "" "$long" "$longer" \
        "$(printf 'not UTF-8: \xff\xfe')" "no newline at the end" >"$work/expected"
    for slots in 1 16; do
        send_in "$slots" || return 1
        must "with $slots slots, the output to equal the input, line for line" \
            cmp "$work/expected" "$work/a.out" || return 1
    done
}

test_1000000_piped_lines_arrive_once_in_order_with_1_and_16_slots() {
    local slots
    seq 1000000 >"$work/in"
    for slots in 1 16; do
        send_in "$slots" || return 1
        sed 's/^Message received: //' "$work/a.out" >"$work/received"
        must "with $slots slots, the 1000000 lines, once each, in order" \
            cmp "$work/in" "$work/received" || return 1
    done
}

test_raw_8_mib_of_random_bytes_keep_their_sha256_with_1_and_16_slots() {
    local slots
    head -c 8M /dev/urandom >"$work/in"
    for slots in 1 16; do
        send_in "$slots" --raw --size 1048576 || return 1
        must "with $slots slots, the same sha256" \
            [ "$(sha256sum <"$work/in")" == "$(sha256sum <"$work/a.out")" ] || return 1
    done
}

# capacity SLOTS: the bytes one frame carries in --raw, in processa's default
# segment for SLOTS slots.
capacity() {
    py 'import shmm, sys
slots = int(sys.argv[1])
slot = shmm.slot_size_for(shmm.default_size(slots), slots)
print(slot - shmm.FRAME_SIZE - shmm.RECORD.size)' "$1"
}

test_raw_sizes_around_a_frame_keep_their_sha256_with_1_2_3_and_16_slots() {
    local slots cap size
    for slots in 1 2 3 16; do
        cap=$(capacity "$slots")
        for size in $((cap - 1)) "$cap" $((cap + 1)) $((2 * cap)); do
            head -c "$size" /dev/urandom >"$work/in"
            send_in "$slots" --raw || return 1
            must "$size bytes with $slots slots (a frame carries $cap): the same sha256" \
                [ "$(sha256sum <"$work/in")" == "$(sha256sum <"$work/a.out")" ] || return 1
        done
    done
}

# writes_of NAME: how many write(2) calls NAME has made (from /proc/PID/io).
writes_of() { awk '$1 == "syscw:" { print $2 }' "/proc/${pid[$1]}/io"; }

test_a_frame_carries_many_lines_so_a_line_costs_far_less_than_a_write() {
    local slots writes
    seq 10000 >"$work/lines"
    for slots in 1 16; do
        next_key
        start_reader a --slots "$slots" || return 1
        open_input b
        start b processb.py -q <"$work/b.in"
        cat "$work/lines" >&"$input"
        must "the 10000 lines to arrive" wait_for grep -q -x "Message received: 10000" \
            "$work/a.out" || return 1
        writes=$(writes_of b)
        must "with $slots slots, processb: fewer than 2500 writes for 10000 lines, not $writes" \
            [ "$writes" -lt 2500 ] || return 1
        writes=$(writes_of a)
        must "with $slots slots, processa: fewer than 2500 writes for 10000 lines, not $writes" \
            [ "$writes" -lt 2500 ] || return 1
        exec {input}>&-
        finish b 0 && finish a 0 || return 1
    done
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

# at_terminal HOW [PATH [STDOUT [STDERR [VARIABLE=VALUE]]]]: run processb with
# a terminal (a pty) on stdin and stderr but a file on stdout; type two
# lines, the second longer than a terminal's own 4095-byte limit (only
# readline's line editing takes it), then end with HOW: eof (Ctrl-D) or
# sigint. PATH, if not empty, is processb's PYTHONPATH; STDOUT "closed"
# starts processb with stdout closed; STDERR "file" sends stderr to
# $work/b.err instead of the terminal; VARIABLE=VALUE goes into its environment.
at_terminal() {
    py 'import os, pty, select, signal, subprocess, sys, time
here, work, proj, how = sys.argv[1:5]
path = {"PYTHONPATH": sys.argv[5]} if len(sys.argv) > 5 and sys.argv[5] else {}
stdout_closed = len(sys.argv) > 6 and sys.argv[6] == "closed"
stderr_to_file = len(sys.argv) > 7 and sys.argv[7] == "file"
extra = dict([sys.argv[8].split("=", 1)]) if len(sys.argv) > 8 else {}
signal.signal(signal.SIGINT, signal.SIG_DFL)  # for processb: bash ignores it in background jobs
master, terminal = pty.openpty()
with open(f"{work}/b.out", "wb") as stdout, open(f"{work}/b.err", "wb") as log:
    b = subprocess.Popen([sys.executable, f"{here}/processb.py", "--path", work,
                          "--proj-id", proj], stdin=terminal, stdout=stdout,
                         stderr=log if stderr_to_file else terminal,
                         env={**os.environ, "TERM": "dumb", **path, **extra},
                         preexec_fn=(lambda: os.close(1)) if stdout_closed else None)
seen = b""
def until_prompt(count):
    global seen
    deadline = time.monotonic() + 30
    while seen.count(b"Please enter: ") < count and time.monotonic() < deadline:
        if select.select([master], [], [], deadline - time.monotonic())[0]:
            seen += os.read(master, 65536)
    return seen.count(b"Please enter: ") >= count
assert until_prompt(1), seen
os.write(master, "hello from a terminal, 你好\r".encode())
assert until_prompt(2), seen
long_line = b"x" * 5000 + b"\r"
for start in range(0, len(long_line), 512):  # as fast as the terminal takes it
    os.write(master, long_line[start:start + 512])
assert until_prompt(3), seen
if how == "eof":
    os.write(master, b"\x04")
else:
    # Only once processb sleeps in select(2): a signal that comes while
    # Python'"'"'s readline is still on its way there is noted but wakes nothing.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{b.pid}/wchan") as wchan:
            if "poll" in wchan.read():  # do_select and do_poll sleep in poll_schedule_timeout
                break
        time.sleep(0.01)
    b.send_signal(signal.SIGINT)
try:
    status = b.wait(timeout=30)
    sys.exit(128 - status if status < 0 else status)  # killed by signal N: -N
finally:
    b.kill()' "$here" "$work" "$proj" "$@"
}

test_terminal_prompt_on_stderr_and_readline_lines_longer_than_4095() {
    next_key
    start_reader a || return 1
    at_terminal eof
    must "processb to end with 0 at Ctrl-D" [ $? == 0 ] || return 1
    finish a 0 || return 1
    must "nothing on processb's stdout: the prompt went to stderr" [ ! -s "$work/b.out" ] || return 1
    printf 'Message received: %s\n' "hello from a terminal, 你好" "$(printf 'x%.0s' {1..5000})" \
        >"$work/expected"
    must "both lines, whole" cmp "$work/expected" "$work/a.out"
}

test_sigint_at_the_terminal_prompt_detaches_and_processa_cleans_up() {
    next_key
    start_reader a || return 1
    at_terminal sigint
    must "processb to end with 130" [ $? == 130 ] || return 1
    finish a 7 || return 1 # processb was stopped: it sent no END frame
    must "processa to say that the stream may be incomplete" one_error a \
        "went away before the end of its stream, after 2 messages" || return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

# Under PYTHON_OTHER, processa or processb is a program of another build,
# for another machine: .ci/aarch64 runs the suite under an arm64 CPython
# and sets PYTHON_OTHER to the host's python3. The two must agree on every
# byte of the segment's layout, and on the FIFOs' protocol.
PYTHON_OTHER=${PYTHON_OTHER:-}

# pair_talks READER_PYTHON WRITER_PYTHON SLOTS: processa under the first,
# processb under the second (PYTHON, local, is what start uses); every line
# of $work/in arrives, in order.
pair_talks() {
    local PYTHON=$1
    next_key
    start_reader a --slots "$3" || return 1
    PYTHON=$2
    start b processb.py <"$work/in"
    finish b 0 && finish a 0 || return 1
    sed 's/^Message received: //' "$work/a.out" >"$work/received"
    must "every line from $2 to $1 with $3 slots" cmp "$work/in" "$work/received"
}

test_processa_and_processb_under_two_interpreters_talk_both_ways() {
    if [[ -z $PYTHON_OTHER ]]; then
        skip "PYTHON_OTHER names no second interpreter (.ci/aarch64 sets it)"
        return 0
    fi
    local slots
    { printf 'hello, shared memory\n你好，共享内存\n\n%s\n' "$(head -c 12288 /dev/zero | tr '\0' x)"
        seq 1000; } >"$work/in"
    for slots in 1 16; do
        pair_talks "$PYTHON" "$PYTHON_OTHER" "$slots" || return 1
        pair_talks "$PYTHON_OTHER" "$PYTHON" "$slots" || return 1
    done
}

# --- Faults and bad input ------------------------------------------------------------

# use_proj N: give this test project id N (the tutorial's 0x94, say).
use_proj() {
    proj=$1
    key=$(key_for "$proj")
    keys+=("$key")
    must "no segment at $key before the test" [ -z "$(shmid_of "$key")" ]
}

# make_segment CONTENT [OFFSET]: create a segment at $key as some other
# program would, with CONTENT at OFFSET (default 0); print its shmid.
make_segment() {
    py 'import shmm, sys
segment = shmm.Segment.create(int(sys.argv[1], 0), 4096, 0o600)
at = int(sys.argv[3])
segment.attach()[at:at + len(sys.argv[2])] = sys.argv[2].encode()
segment.detach()
print(segment.shmid)' "$key" "$1" "${2:-0}"
}

# frames_taken_at_least N: processa has taken at least N frames. A slot is
# refilled only once its frame is acknowledged, so the newest frame in the
# ring, less the number of slots, is a frame processa has surely taken.
frames_taken_at_least() {
    py 'import shmm, sys
with shmm.Segment.find(int(sys.argv[1], 0)) as segment:
    memory = segment.attach(readonly=True)
    slots, slot_size, *_ = shmm.read_header(memory)
    newest = max(shmm.FRAME.unpack_from(memory, shmm.HEADER_SIZE + n * slot_size)[3]
                 for n in range(slots))
sys.exit(newest - slots + 1 < int(sys.argv[2]))' "$key" "$1"
}

# send_unfinished_message: a whole line, then 100 kB with no newline: a
# message of many frames that processb has begun and cannot end.
send_unfinished_message() {
    echo "whole" >&"$input"
    must "the whole line" wait_for grep -q -x "Message received: whole" "$work/a.out" || return 1
    head -c 100000 /dev/zero | tr '\0' y >&"$input"
    must "processa to have taken frames of the unfinished one" wait_for frames_taken_at_least 3
}

test_stale_segment_after_kill_9_is_replaced_with_a_warning() {
    next_key
    start_reader a || return 1
    open_input b
    start b processb.py <"$work/b.in"
    must "nattch 2" wait_for nattch_is 2 || return 1
    kill -KILL "${pid[a]}" "${pid[b]}"
    finish a 137 && finish b 137 || return 1
    local stale
    stale=$(ipcs_field "$key" 2)
    must "the killed pair to leave its segment, nattch 0" nattch_is 0 || return 1
    must "and its FIFOs" [ -p "$fifo_dir/$key.notify" ] || return 1
    start_reader a2 || return 1
    must "a warning that shmid $stale was removed" logged a2 "^\[Warning\].*removed shmid $stale," ||
        return 1
    must "a new shmid" [ "$(ipcs_field "$key" 2)" != "$stale" ] || return 1
    message_gets_through a2 "after the crash"
}

# leftover_is_replaced DATA: a segment holding DATA at offset 0, nobody
# attached, is taken for a crashed processa's and replaced, with a warning.
leftover_is_replaced() {
    next_key
    local left
    left=$(make_segment "$1") && shmids+=("$left")
    start_reader a || return 1
    must "a warning that shmid $left was removed" logged a "removed shmid $left," || return 1
}

test_a_leftover_of_an_older_layout_counts_as_stale() {
    # A processa of the version before ours (layout 2: magic shmm.py2, a
    # 64-byte header) killed with kill -9 left this; an upgrade must not
    # turn it into a segment that nobody may remove.
    leftover_is_replaced "shmm.py2" || return 1
    message_gets_through a "after the upgrade" || return 1
    next_key
    shmids+=("$(make_segment "shmm.py2")")
    "$PYTHON" "$here/shmm.py" clean --path "$work" --proj-id "$proj" 2>"$work/clean.err"
    must "shmm.py clean to remove it as well" no_segment
}

test_all_zero_segment_whose_creator_is_gone_counts_as_stale() {
    leftover_is_replaced "" || return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

test_segment_that_is_not_ours_is_refused_and_left_alone() {
    local foreign offset data
    # At 64: a header of zeros, and data behind it. "shmm.py: ..." begins as
    # our magic does, but without a layout's digit: a learner's text.
    for offset in 0 64 notes; do
        data="someone else's data"
        [[ $offset == notes ]] && offset=0 data="shmm.py: my notes from lesson 7"
        next_key
        foreign=$(make_segment "$data" "$offset") && shmids+=("$foreign")
        start a processa.py
        finish a 3 || return 1
        must "one error line saying how to pick a key" one_error a "pick another key" ||
            return 1
        must "the segment untouched (data at $offset)" \
            [ "$(ipcs_field "$key" 2)" == "$foreign" ] || return 1
        must "no FIFOs" no_fifos || return 1
        ipcrm -m "$foreign"
    done
}

test_second_processa_is_refused_and_the_first_keeps_working() {
    next_key
    start_reader a || return 1
    start a2 processa.py
    finish a2 3 || return 1
    must "one error line with shmid, nattch and creator pid" one_error a2 \
        "has shmid $(ipcs_field "$key" 2), in use by 1 attached process(es), created by pid ${pid[a]}" ||
        return 1
    must "nattch still 1" nattch_is 1 || return 1
    message_gets_through a "still served by the first"
}

test_one_of_three_writers_is_accepted_and_its_lines_arrive_whole() {
    next_key
    start_reader a || return 1
    local w fd=() winner="" refused=0
    for w in 1 2 3; do
        open_input "w$w"
        fd[w]=$input
        seq -f "writer $w line %g" 1000 >"$work/w$w.lines"
    done
    for w in 1 2 3; do start "w$w" processb.py <"$work/w$w.in"; done
    must "two writers to end" wait_for two_writers_ended || return 1
    for w in 1 2 3; do
        if ended "w$w"; then
            finish "w$w" 6 && one_error "w$w" "one writer at a time" && refused=$((refused + 1))
        else
            winner=$w
        fi
    done
    must "two refusals and a winner" [ "$refused" == 2 -a -n "$winner" ] || return 1
    for w in 1 2 3; do
        input=${fd[w]}
        cat "$work/w$w.lines" >&"$input"
        exec {input}>&-
    done
    finish "w$winner" 0 && finish a 0 || return 1
    sed 's/^Message received: //' "$work/a.out" >"$work/received"
    must "writer $winner's 1000 lines, whole, once, in order, alone" \
        cmp "$work/w$winner.lines" "$work/received"
}
two_writers_ended() {
    local w count=0
    for w in w1 w2 w3; do ended "$w" && count=$((count + 1)); done
    ((count == 2))
}

test_second_processb_is_refused_naming_the_connected_one() {
    next_key
    start_reader a || return 1
    open_input b
    start b processb.py <"$work/b.in"
    must "nattch 2" wait_for nattch_is 2 || return 1
    must "processb to take the writer's lock" wait_for logged b "took the writer's lock" ||
        return 1
    start b2 processb.py </dev/null
    finish b2 6 || return 1
    must "one error line naming pid ${pid[b]}" one_error b2 \
        "processb pid ${pid[b]} is already writing to processa at key $key" || return 1
    message_gets_through_input a b "the first writer goes on"
}

test_processb_reports_a_killed_processa_and_detaches() {
    next_key
    start_reader a --slots 16 || return 1
    open_input b
    start b processb.py <"$work/b.in"
    yes "an endless line" >&"$input" & # processa is killed long before the end
    pid[feeder]=$!
    must "messages to flow" wait_for [ -s "$work/a.out" ] || return 1
    kill -KILL "${pid[a]}"
    finish a 137 && finish b 7 || return 1
    kill -KILL "${pid[feeder]}"
    finish feeder 137 || return 1
    exec {input}>&-
    must "one error line" one_error b "processa has gone away" || return 1
    must "processb detached (nattch 0)" nattch_is 0 || return 1
    "$PYTHON" "$here/shmm.py" clean --path "$work" --proj-id "$proj" 2>"$work/clean.err"
    must "shmm.py clean to remove what processa left" no_segment && no_fifos
}

# asleep_on_a_count NAME: NAME's main thread sleeps in futex(2), that is in
# sem_timedwait on one of the segment's counts, its spinning given up.
asleep_on_a_count() { grep -q futex "/proc/${pid[$1]}/wchan" 2>/dev/null; }

# one_line_sent_from_a_terminal: processa runs, and processb, whose stdin
# stays open on $input as a terminal's would, has sent it the line "one".
one_line_sent_from_a_terminal() {
    next_key
    start_reader a || return 1
    open_input b
    start b processb.py <"$work/b.in"
    echo "one" >&"$input"
    must "the line to arrive" wait_for grep -q -x "Message received: one" "$work/a.out"
}

test_kill_9_of_processb_while_processa_sleeps_on_the_count_is_noticed() {
    one_line_sent_from_a_terminal || return 1
    must "processa to sleep on the count of full slots" wait_for asleep_on_a_count a || return 1
    kill -KILL "${pid[b]}"
    finish b 137 && finish a 7 || return 1
    exec {input}>&-
    must "one error line" one_error a \
        "went away before the end of its stream, after 1 message" || return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

test_kill_9_of_processa_while_processb_waits_for_a_free_slot_is_noticed() {
    one_line_sent_from_a_terminal || return 1
    kill -STOP "${pid[a]}"
    echo "two" >&"$input" # fills the one slot: processb then waits for it back
    must "processb to sleep on the count of free slots" wait_for asleep_on_a_count b || return 1
    kill -KILL "${pid[a]}"
    finish a 137 && finish b 7 || return 1
    exec {input}>&-
    must "one error line" one_error b "processa has gone away" || return 1
    must "processb detached (nattch 0)" nattch_is 0 || return 1
    "$PYTHON" "$here/shmm.py" clean --path "$work" --proj-id "$proj" 2>"$work/clean.err"
    must "shmm.py clean to remove what processa left" no_segment && no_fifos
}

# A hand-off between two sides that both run is a few stores and atomics in
# the segment: no system call. One process plays both sides, alternating, so
# that neither ever has to wait (with FIFO tokens, each frame was a write(2)
# and a read(2)); strace counts the calls between two marker writes.
test_a_hand_off_when_nobody_waits_makes_no_system_call() {
    strace -f -o /dev/null true 2>/dev/null || { skip "strace cannot trace here"; return 0; }
    PYTHONPATH=$here strace -f -o "$work/trace" -e trace=read,write,futex,poll,ppoll \
        "$PYTHON" -c 'import os, shmm
segment = shmm.Segment.create(shmm.IPC_PRIVATE, shmm.segment_size(1), 0o600)
memory = segment.attach()
segment.remove()  # freed when we detach or exit, whatever happens
slot_size = shmm.write_header(memory, 1, shmm.BYTES)
shmm.init_counts(memory, 1)
notify_r, notify_w = os.pipe()  # stand-ins for the FIFOs: the hello, the hang-ups
ack_r, ack_w = os.pipe()
writer = shmm.Writer(memory, 1, slot_size, notify_w, ack_r)
reader = shmm.Reader(memory, 1, slot_size, notify_r)
taken = []
os.write(1, b"hand-offs begin\n")
for number in range(1000):
    writer.send(b"%d" % number)
    writer.flush()
    assert reader.full.wait()
    reader.take_frame(lambda piece, more: taken.append(bytes(piece)))
os.write(1, b"hand-offs end\n")
assert taken == [b"%d" % number for number in range(1000)], taken[:3]' >"$work/driver.out"
    must "the driver to hand 1000 frames over, in order" [ $? == 0 ] || return 1
    awk '/write\(1, "hand-offs end/ { inside = 0 } inside && !/^[0-9]+ +(---|\+\+\+)/
        /write\(1, "hand-offs begin/ { inside = 1 }' "$work/trace" >"$work/calls"
    must "both markers in the trace" grep -q 'hand-offs end' "$work/trace" || return 1
    must "no system call between them" [ ! -s "$work/calls" ] ||
        { head -n 5 "$work/calls" | sed 's/^/#   /'; return 1; }
}

test_a_message_cut_short_by_a_killed_processb_is_never_printed_with_1_and_16_slots() {
    local slots
    for slots in 1 16; do
        next_key
        start_reader a --slots "$slots" || return 1
        open_input b
        start b processb.py <"$work/b.in"
        send_unfinished_message || return 1
        kill -KILL "${pid[b]}"
        finish b 137 && finish a 7 || return 1
        must "one error line" one_error a "went away before the end of its stream" ||
            return 1
        must "with $slots slots, only the whole message printed" \
            [ "$(cat "$work/a.out")" == "Message received: whole" ] || return 1
        must "no segment, no FIFOs" no_segment && no_fifos || return 1
        exec {input}>&-
    done
}

test_a_paused_processa_holds_processb_back_and_loses_nothing() {
    next_key
    start_reader a --slots 16 || return 1
    open_input b
    start b processb.py <"$work/b.in"
    seq 1 10000 >&"$input"
    must "the first lines to arrive" wait_for grep -q -x "Message received: 10000" "$work/a.out" ||
        return 1
    kill -STOP "${pid[a]}"
    seq 10001 20000 >&"$input" # more than 16 slots hold: processb must wait
    sleep 2 # the pause under test, not a wait for an event
    must "processb to wait for processa, not give up" running b || return 1
    kill -CONT "${pid[a]}"
    exec {input}>&-
    finish b 0 && finish a 0 || return 1
    seq 20000 >"$work/in"
    sed 's/^Message received: //' "$work/a.out" >"$work/received"
    must "all 20000 lines, once, in order" cmp "$work/in" "$work/received"
}

test_processb_without_processa_gives_up_after_wait() {
    next_key
    start b processb.py --wait 1 </dev/null
    finish b 5 || return 1
    must "one error line" one_error b "no segment at key $key after 1 s: start processa first" ||
        return 1
    must "nothing created" no_segment && no_fifos
}

test_processb_asking_for_more_bytes_is_told_the_segment_size() {
    next_key
    start_reader a || return 1
    start b processb.py --size 8192 </dev/null
    finish b 3 || return 1
    must "one error line with EINVAL and the size" one_error b \
        "EINVAL (Invalid argument): the segment at key $key has 4096 bytes, fewer than --size 8192" ||
        return 1
    must "processa untouched (nattch 1)" nattch_is 1 || return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

test_processb_refuses_a_segment_more_open_than_its_mode() {
    next_key
    start_reader a --mode 0666 || return 1
    start b processb.py </dev/null
    finish b 3 || return 1
    must "one error line" one_error b "has mode 0666, more open than --mode 0600" || return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

# nobody_env: the environment prefix of whatever runs as nobody. Root's
# SHMM_FIFO_DIR is private to root, so nobody gets none, unless a test
# names one for nobody with nobody_fifo_dir=DIR.
nobody_fifo_dir=""
nobody_env() {
    nobody_env=(env -u SHMM_FIFO_DIR)
    [[ -z $nobody_fifo_dir ]] || nobody_env+=("SHMM_FIFO_DIR=$nobody_fifo_dir")
}

# as_nobody COMMAND...: run COMMAND as the user nobody, from /.
as_nobody() {
    nobody_env
    (cd / && "${nobody_env[@]}" setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups "$@")
}

# why_not_nobody: print why this run cannot test as another user, if it cannot.
why_not_nobody() {
    if [[ $(id -u) != 0 ]]; then
        echo "not root: cannot become another user"
    elif ! id nobody >/dev/null 2>&1; then
        echo "no user nobody"
    elif ! as_nobody "$PYTHON_NOBODY" -c 'import sys; sys.path[0] = sys.argv[1]; import shmm' \
        "$here" 2>/dev/null; then
        echo "nobody cannot run $PYTHON_NOBODY on $here"
    fi
}

test_another_user_cannot_attach_a_0600_segment() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    next_key
    start_reader a || return 1
    as_nobody "$PYTHON_NOBODY" "$here/processb.py" --path "$work" --proj-id "$proj" --wait 5 \
        </dev/null >"$work/n.out" 2>"$work/n.err"
    must "exit status 4 for nobody" [ $? == 4 ] || return 1
    must "one error line with EACCES" one_error n "EACCES (Permission denied)" || return 1
    must "nattch still 1" nattch_is 1 || return 1
    message_gets_through a "the pair is untouched"
}

test_mode_0666_lets_another_user_attach_but_not_reach_the_fifos() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    global_lock || return 1 # nobody's processb looks in nobody's FIFO directory, which others plant
    next_key
    start_reader a --mode 0666 || return 1
    must "perms 666" [ "$(ipcs_field "$key" 4)" == 666 ] || return 1
    must "nobody to attach it" as_nobody "$PYTHON_NOBODY" -c 'import sys; sys.path[0] = sys.argv[1]
import shmm
with shmm.Segment.find(int(sys.argv[2], 0)) as segment:
    segment.attach()' "$here" "$key" || return 1
    as_nobody "$PYTHON_NOBODY" "$here/processb.py" --path "$work" --proj-id "$proj" --mode 0666 \
        --wait 1 </dev/null >"$work/n.out" 2>"$work/n.err"
    must "exit status 5 for nobody's processb" [ $? == 5 ] || return 1
    must "one error line about private FIFOs" one_error n "FIFOs are private to its own user" ||
        return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

# nobody_dir_free: set nobody_dir to nobody's FIFO directory, if this run can
# act as nobody and may plant that directory; otherwise skip, saying why.
nobody_dir_free() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 1
    global_lock || return 1
    nobody_dir=/tmp/shmm-$(id -u nobody)
    if [[ -e $nobody_dir || -L $nobody_dir ]]; then
        skip "$nobody_dir exists already: it is not ours to replace"
        return 1
    fi
}

test_a_planted_fifo_directory_is_refused_and_nothing_is_left() {
    local planted status nobody_key nobody_dir
    nobody_dir_free || return 0
    planted=$nobody_dir
    next_key
    nobody_key=$(shmm key --path "$here" --proj-id "$proj" -q) && keys+=("$nobody_key")
    must "no segment at $nobody_key yet" [ -z "$(shmid_of "$nobody_key")" ] || return 1
    mkdir -m 0777 "$work/elsewhere"
    ln -s "$work/elsewhere" "$planted" # what another user could leave in /tmp
    as_nobody "$PYTHON_NOBODY" "$here/processa.py" --path "$here" --proj-id "$proj" </dev/null \
        >"$work/n.out" 2>"$work/n.err"
    status=$?
    rm -f "$planted"
    must "exit status 1, not $status" [ $status == 1 ] || return 1
    must "one error line" one_error n "$planted must be a directory of uid $(id -u nobody)" ||
        return 1
    must "no segment left" [ -z "$(shmid_of "$nobody_key")" ] || return 1
    must "nothing made in the planted directory" [ -z "$(ls -A "$work/elsewhere")" ]
}

test_bad_arguments_are_refused_before_anything_is_created() {
    next_key
    local bad program status
    local -a cases=("--proj-id -1" "--proj-id 0x100" "--path $work/missing" "--size 0"
        "--size 18446744073709551616" "--mode 0999" "--mode rw" "--mode 01777" "--bogus"
        "--wait -1" "--slots 0" "--size 100" "--proj-id ٣" "--proj-id 1_0" "--mode ٦٠٠"
        "--path /proc/self")
    for bad in "${cases[@]}"; do
        for program in processa.py processb.py; do
            [[ $program == processa.py && $bad == --wait* ]] && continue
            [[ $program == processb.py && $bad == --slots* ]] && continue
            [[ $program == processb.py && $bad == "--size 100" ]] && continue
            local -a wait=()
            [[ $program == processb.py ]] && wait=(--wait 1)
            # shellcheck disable=SC2086 # each case is several words
            "$PYTHON" "$here/$program" --path "$work" --proj-id "$proj" "${wait[@]}" $bad \
                </dev/null >"$work/bad.out" 2>"$work/bad.err"
            status=$?
            must "$program $bad: exit status 2, not $status" [ $status == 2 ] || return 1
            must "$program $bad: one error line" one_error bad "" || return 1
        done
    done
    must "nothing created" no_segment && no_fifos
}

test_unreadable_ftok_path_is_refused_with_eacces() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    next_key
    mkdir -m 0700 "$work/private"
    as_nobody "$PYTHON_NOBODY" "$here/processa.py" --path "$work/private/x" </dev/null \
        >"$work/n.out" 2>"$work/n.err"
    must "exit status 2" [ $? == 2 ] || return 1
    must "one error line with EACCES" one_error n "EACCES (Permission denied): --path must name"
}

test_proj_id_0x1246_is_noted_not_refused() {
    next_key
    start_reader a --proj-id $((0x1200 + proj)) || return 1
    must "a note on the low 8 bits" logged a "note: ftok keeps only the low 8 bits" || return 1
    must "the key of the low 8 bits" logged a "gave key $key$" || return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

# fake_writer CASE: act as processb, but put a corrupt frame in slot 0.
fake_writer() {
    py 'import os, shmm, sys, time
key = int(sys.argv[1], 0)
for _ in range(600):
    try:
        notify, ack = shmm.connect_writer(key)
        break
    except OSError:
        time.sleep(0.05)
with shmm.Segment.find(key) as segment:
    memory = segment.attach()
    frame = {"length": (shmm.FRAME_MAGIC, 1 << 20, 0, 0), "magic": (b"evil", 5, 0, 0),
             "record": (shmm.FRAME_MAGIC, 64, 0, 0)}
    shmm.FRAME.pack_into(memory, shmm.HEADER_SIZE, *frame[sys.argv[2]])
    shmm.RECORD.pack_into(memory, shmm.HEADER_SIZE + shmm.FRAME_SIZE, 1 << 20, 0)
    shmm.sem_post(shmm.sem_in(memory, shmm.FULL_AT))  # count the frame
    os.write(notify, b"!")  # hello
    os.read(ack, 1)  # end of file once processa has stopped' "$key" "$1"
}

test_corrupt_frames_are_reported_and_never_read_past() {
    local case
    for case in length magic record; do
        next_key
        start_reader a || return 1
        must "the fake writer to finish" fake_writer "$case" || return 1
        finish a 8 || return 1
        must "one error line for a bad $case" one_error a "frame 0" || return 1
        must "no segment, no FIFOs" no_segment && no_fifos || return 1
    done
}

test_key_with_the_top_bit_set_works() {
    use_proj 0x94 || return 1
    start_reader a || return 1
    must "the key 0x94... logged" logged a "gave key $key$" || return 1
    must "ipcs -m to show it" [ "$(ipcs_field "$key" 1)" == "$key" ] || return 1
    message_gets_through a "through a key with the top bit set"
}

# signal_number NAME: 2 for INT, 15 for TERM, 1 for HUP.
signal_number() { kill -l "$1"; }

test_signals_while_each_waits_for_the_other() {
    local sig
    for sig in INT TERM HUP QUIT USR1 USR2 ALRM; do
        next_key
        start_reader a || return 1
        kill -"$sig" "${pid[a]}"
        finish a $((128 + $(signal_number $sig))) || return 1
        must "SIG$sig: no segment, no FIFOs" no_segment && no_fifos || return 1
        start b processb.py </dev/null
        must "processb to wait" wait_for logged b "waiting up to" || return 1
        kill -"$sig" "${pid[b]}"
        finish b $((128 + $(signal_number $sig))) || return 1
        must "SIG$sig: nothing created" no_segment && no_fifos || return 1
    done
}

test_signals_to_either_side_while_connected_or_mid_message() {
    local sig target when
    for sig in INT TERM HUP; do
        for target in a b; do
            for when in idle mid-message; do
                next_key
                start_reader a || return 1
                open_input b
                start b processb.py <"$work/b.in"
                must "processb to hold the channel" wait_for logged b "took the writer's lock" ||
                    return 1
                [[ $when == idle ]] || send_unfinished_message || return 1
                if [[ $target == a ]]; then
                    kill -"$sig" "${pid[a]}"
                    finish a $((128 + $(signal_number $sig))) && finish b 7 || return 1
                else
                    kill -STOP "${pid[a]}" # so that only processb could remove the segment
                    kill -"$sig" "${pid[b]}"
                    finish b $((128 + $(signal_number $sig))) || return 1
                    must "SIG$sig to processb, $when: the segment still there" nattch_is 1 ||
                        return 1
                    kill -CONT "${pid[a]}"
                    finish a 7 || return 1 # no END frame: the stream may be incomplete
                    must "processa to say so" one_error a "the output may be incomplete" ||
                        return 1
                fi
                must "SIG$sig to $target, $when: no segment, no FIFOs" no_segment && no_fifos ||
                    return 1
                exec {input}>&-
            done
        done
    done
}

# --- Closed and odd standard streams --------------------------------------------

test_processa_with_stdout_closed_is_refused_before_anything_is_made() {
    next_key
    "$PYTHON" "$here/processa.py" --path "$work" --proj-id "$proj" >&- 2>"$work/a.err"
    must "exit status 1" [ $? == 1 ] || return 1
    must "one error line naming stdout" one_error a "stdout is closed" || return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

test_processb_with_stdin_closed_is_refused_and_processa_waits_on() {
    next_key
    start_reader a || return 1
    start b processb.py <&-
    finish b 1 || return 1
    must "one error line naming stdin" one_error b "stdin is closed" || return 1
    message_gets_through a "after the refused one"
}

test_processb_at_a_terminal_prompts_there_with_stderr_in_a_file_or_an_odd_encoding() {
    next_key
    start_reader a || return 1
    at_terminal eof "" "" file
    must "processb to end with 0 at Ctrl-D, stderr in a file" [ $? == 0 ] || return 1
    finish a 0 || return 1
    must "no prompt in the log" [ "$(grep -c "Please enter" "$work/b.err")" == 0 ] || return 1
    must "both lines whole: line editing on" [ "$(grep -c "^Message received: x\{5000\}$" \
        "$work/a.out")" == 1 ] || return 1
    next_key
    start_reader a || return 1
    at_terminal eof "" "" "" PYTHONIOENCODING=utf-16
    must "processb to end with 0 at Ctrl-D, PYTHONIOENCODING=utf-16" [ $? == 0 ] || return 1
    finish a 0 || return 1
    must "the typed line to arrive" grep -q "hello from a terminal" "$work/a.out"
}

test_processb_at_a_terminal_with_stdout_closed_still_sends() {
    next_key
    start_reader a || return 1
    at_terminal eof "" closed
    must "processb to end with 0 at Ctrl-D" [ $? == 0 ] || return 1
    finish a 0 || return 1
    must "the typed line to arrive" grep -q "hello from a terminal" "$work/a.out"
}

test_processa_names_stdout_when_it_is_full_and_waits_when_it_is_non_blocking() {
    next_key
    # shellcheck disable=SC2016 # "$@" is the inner shell's
    start_command a sh -c 'exec "$@" >/dev/full' sh "$PYTHON" "$here/processa.py" \
        --path "$work" --proj-id "$proj"
    must "processa to listen" wait_for logged a "waiting for processb" || return 1
    echo "into a full disk" >"$work/sender.in"
    start sender processb.py <"$work/sender.in"
    finish a 1 || return 1
    finish sender 7
    must "one error line naming stdout and ENOSPC" one_error a "writing to stdout: ENOSPC" ||
        return 1
    must "no segment, no FIFOs" no_segment && no_fifos || return 1
    # A non-blocking stdout whose reader is slow: EAGAIN is waited out, not fatal.
    next_key
    seq 200000 >"$work/lines"
    py 'import os, subprocess, sys, time
here, work, proj = sys.argv[1:4]
common = ["--path", work, "--proj-id", proj, "-q"]
out, into = os.pipe()
os.set_blocking(into, False)
reader = subprocess.Popen([sys.executable, f"{here}/processa.py", *common], stdout=into)
os.close(into)
with open(f"{work}/lines", "rb") as lines:
    writer = subprocess.Popen([sys.executable, f"{here}/processb.py", *common], stdin=lines)
received = b""
while chunk := os.read(out, 4096):
    received += chunk
    time.sleep(0.001)  # slower than processa writes: its pipe fills up
sys.exit(reader.wait() or writer.wait() or received.count(b"\n") != 200000)' \
        "$here" "$work" "$proj"
    must "every line through a non-blocking stdout, both ending well" [ $? == 0 ]
}

test_processb_waits_out_a_non_blocking_stdin_in_both_modes() {
    # A stdin left non-blocking by whoever feeds it: EAGAIN means "nothing yet",
    # not an error, in text mode and in --raw alike.
    local mode
    for mode in "" --raw; do
        next_key
        py 'import os, subprocess, sys, time
here, work, proj, mode = sys.argv[1:5]
common = ["--path", work, "--proj-id", proj, "-q", *([mode] if mode else [])]
reader = subprocess.Popen([sys.executable, f"{here}/processa.py", *common],
                          stdout=subprocess.PIPE)
out, into = os.pipe()
os.set_blocking(out, False)
writer = subprocess.Popen([sys.executable, f"{here}/processb.py", *common], stdin=out)
os.close(out)
numbers = range(3000)
sent = b"".join(b"%d\n" % n for n in numbers)
for start in range(0, len(sent), 1000):
    os.write(into, sent[start:start + 1000])
    time.sleep(0.01)  # slower than processb reads: it meets an empty stdin
os.close(into)
printed = sent if mode else b"".join(b"Message received: %d\n" % n for n in numbers)
received = reader.stdout.read()
sys.exit(reader.wait() or writer.wait() or received != printed)' \
            "$here" "$work" "$proj" "$mode"
        must "all of stdin through a non-blocking stdin (${mode:-text})" [ $? == 0 ] || return 1
    done
}

# --- Integrity: nothing lost silently, nothing removed that is not ours ------------

# stream_is_cut MODE: processb streams endless input (MODE: lines or --raw)
# and is killed in the middle; processa must not take that for a clean end.
stream_is_cut() {
    local raw=()
    [[ $1 == --raw ]] && raw=(--raw)
    next_key
    start_reader a "${raw[@]}" || return 1
    open_input b
    start b processb.py "${raw[@]}" <"$work/b.in"
    yes "an endless line" >&"$input" &
    pid[feeder]=$!
    must "processa to have printed some of it" wait_for [ -s "$work/a.out" ] || return 1
    kill -KILL "${pid[b]}" "${pid[feeder]}"
    finish feeder 137 && finish b 137 && finish a 7 || return 1
    must "one error line saying the stream may be incomplete ($1)" one_error a \
        "went away before the end of its stream, after" || return 1
    must "the output may be incomplete ($1)" logged a "the output may be incomplete" || return 1
    must "no segment, no FIFOs" no_segment && no_fifos || return 1
    exec {input}>&-
}

test_a_stream_cut_by_kill_9_is_exit_7_not_a_clean_end() {
    stream_is_cut lines && stream_is_cut --raw
}

test_a_second_processa_never_takes_the_fifos_of_a_live_one() {
    next_key
    start_reader a || return 1
    local first
    first=$(shmid_of "$key")
    ipcrm -m "$first" # now "dest": the key is free for a second processa
    start a2 processa.py
    finish a2 3 || return 1
    must "one error line: the FIFO is in use" one_error a2 "is in use: another processa listens" ||
        return 1
    must "the second one's segment removed" no_segment || return 1
    must "the first one's FIFOs still there" [ -p "$fifo_dir/$key.notify" ] || return 1
    shmm clean --path "$work" --proj-id "$proj" 2>"$work/clean.err"
    must "shmm.py clean to refuse them too, exit 3" [ $? == 3 ] || return 1
    must "one error line" one_error clean "is in use: a processa listens" || return 1
    must "the first one's FIFOs still there after clean" [ -p "$fifo_dir/$key.ack" ] || return 1
    must "the first one still listening" running a || return 1
    kill -TERM "${pid[a]}"
    finish a 143 || return 1
    must "the first one to remove its own FIFOs" no_fifos
}

test_fifos_or_their_directory_removed_mid_conversation_are_a_warning_not_a_failure() {
    local what
    for what in FIFOs directory; do
        next_key
        # A directory of this test's own (SHMM_FIFO_DIR), so that removing it
        # disturbs no other run.
        mkdir -m 0700 "$work/fifos"
        SHMM_FIFO_DIR=$work/fifos start_reader a || return 1
        open_input b
        SHMM_FIFO_DIR=$work/fifos start b processb.py <"$work/b.in"
        echo "before" >&"$input"
        must "the first line" wait_for grep -q -x "Message received: before" "$work/a.out" ||
            return 1
        if [[ $what == FIFOs ]]; then
            rm "$work/fifos/$key.notify" "$work/fifos/$key.ack"
        else
            rm -r "$work/fifos"
        fi
        echo "after" >&"$input"
        exec {input}>&-
        finish b 0 && finish a 0 || return 1
        must "both lines ($what removed)" grep -q -x "Message received: after" "$work/a.out" ||
            return 1
        must "a warning, not an error ($what removed)" logged a \
            "^\[Warning\].*removed while we ran" || return 1
        must "no segment" no_segment || return 1
        rm -rf "$work/fifos"
    done
}

test_a_leftover_is_removed_only_if_still_a_leftover() {
    command -v strace >/dev/null || { skip "no strace to widen the race"; return 0; }
    next_key
    # processa a stops for 1.5 s in shmat, just after making its segment; a2,
    # started meanwhile, finds that segment unattached and all zero, and
    # stops for 3 s in its own shmat, while a attaches and writes its header.
    start_command a strace -o /dev/null -e inject=shmat:delay_enter=1500000 "$PYTHON" \
        "$here/processa.py" --path "$work" --proj-id "$proj"
    must "a's segment" wait_for segment_at_key || return 1
    shmids+=("$(shmid_of "$key")")
    start_command a2 strace -o /dev/null -e inject=shmat:delay_enter=3000000 "$PYTHON" \
        "$here/processa.py" --path "$work" --proj-id "$proj"
    finish a2 3 || return 1
    must "a2 to see the segment in use, not a leftover" one_error a2 "in use by 1 attached" ||
        return 1
    must "a to listen" wait_for logged a "waiting for processb" || return 1
    message_gets_through a "a's segment survived"
}

test_text_mode_carries_a_line_of_its_limit_and_refuses_a_longer_one() {
    # The longest line, followed by short ones in the same frame, goes through.
    py 'import comm, sys
sys.stdout.write("x" * comm.MAX_LINE + "\n" + "short\n" * 100)' >"$work/in"
    send_in 1 --size 200000 || return 1
    must "the longest line and 100 short ones" [ "$(wc -l <"$work/a.out")" == 101 ] || return 1
    next_key
    start_reader a || return 1
    start b processb.py </dev/zero
    finish b 2 || return 1
    must "one error line suggesting --raw" one_error b "the most text mode carries" || return 1
    finish a 7 || return 1
    must "nothing printed of the endless line" [ ! -s "$work/a.out" ] || return 1
    # A writer that is not processb, and sends a longer line anyway, is refused.
    next_key
    start_reader a || return 1
    py 'import os, shmm, sys, time
key = int(sys.argv[1], 0)
notify, ack = shmm.connect_writer(key)
with shmm.Segment.find(key) as segment:
    memory = segment.attach()
    layout = shmm.read_header(memory)
    shmm.claim_header(memory, os.getpid())
    writer = shmm.Writer(memory, layout.slots, layout.slot_size, notify, ack)
    try:
        writer.send(b"x" * (2 << 20))
        writer.close()
    except shmm.PeerGone:
        pass' "$key"
    finish a 8 || return 1
    must "one error line: the line is too long" one_error a "a line longer than 1048576 bytes" ||
        return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

test_processb_refuses_a_processa_of_the_other_mode_and_processa_waits_on() {
    local reader_mode writer_mode
    for reader_mode in --raw -v; do
        writer_mode=$([[ $reader_mode == --raw ]] && echo -v || echo --raw)
        next_key
        start_reader a "$reader_mode" || return 1
        start b processb.py "$writer_mode" --wait 5 </dev/null
        finish b 3 || return 1
        must "one error line naming the option" one_error b \
            "run processb $([[ $reader_mode == --raw ]] && echo with || echo without) --raw" ||
            return 1
        must "processa to wait on" running a || return 1
        echo "the right mode" >"$work/sender.in"
        start sender processb.py "$reader_mode" <"$work/sender.in"
        finish sender 0 && finish a 0 || return 1
        must "the line through ('$reader_mode')" grep -q "the right mode" "$work/a.out" || return 1
    done
}

test_a_leftover_of_another_user_is_never_removed() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    next_key
    local foreign
    foreign=$(as_nobody /usr/bin/python3 -c 'import sys; sys.path[0] = sys.argv[1]
import shmm
print(shmm.Segment.create(int(sys.argv[2], 0), 4096, 0o666).shmid)' "$here" "$key") &&
        shmids+=("$foreign")
    must "nobody's all-zero segment, creator gone" [ -n "$foreign" ] || return 1
    start a processa.py
    finish a 3 || return 1
    must "one error line naming the owner" one_error a "created by nobody (uid $(id -u nobody))" ||
        return 1
    must "the segment untouched" [ "$(ipcs_field "$key" 2)" == "$foreign" ] || return 1
    ipcrm -m "$foreign"
}

# --- shmm.py as ipcs and ipcrm, and the tutorial's own programs ---------------------

shmm() { "$PYTHON" "$here/shmm.py" "$@"; }

# same_output COMMAND1 -- COMMAND2: both print the same. Other processes may
# change the segments between the two, so compare until they agree.
same_output() {
    local split
    for ((split = 1; split <= $#; split++)); do [[ ${!split} == -- ]] && break; done
    wait_for outputs_equal "$split" "$@" && return 0
    sed 's/^/#   /' "$work/diff"
    return 1
}
outputs_equal() {
    local split=$1
    shift
    diff <("${@:1:split-1}" 2>&1) <("${@:split+1}" 2>&1) >"$work/diff"
}

# hold_segments KEY1 KEY2: create three segments that ipcs shows in three
# ways (3333 bytes at KEY1; IPC_PRIVATE; at KEY2 but removed while attached,
# so key 0 and dest) and hold them until input ends. Sets held=(shmids).
hold_segments() {
    open_input fixture
    start_command fixture env PYTHONPATH="$here" "$PYTHON" -c 'import shmm, sys
def made(segment):
    print(segment.shmid, flush=True)  # at once, so the test can clean up after a crash
    return segment
odd = made(shmm.Segment.create(int(sys.argv[1], 0), 3333, 0o640))
private = made(shmm.Segment.create(shmm.IPC_PRIVATE, 4096, 0o600))
dest = made(shmm.Segment.create(int(sys.argv[2], 0), 8192, 0o666))
dest.attach()
dest.remove()
print("ready", flush=True)
sys.stdin.read()
odd.remove()
private.remove()' "$1" "$2" <"$work/fixture.in"
    wait_for fixture_ready_or_ended
    mapfile -t held < <(grep -v ready "$work/fixture.out")
    shmids+=("${held[@]}")
    must "the fixture to make its segments" grep -q ready "$work/fixture.out"
}
fixture_ready_or_ended() { grep -q ready "$work/fixture.out" || ended fixture; }

# all_but_the_last_line COMMAND...: what COMMAND prints, but its last line
# (shmm.py stat's mode in decimal, which ipcs does not print).
all_but_the_last_line() { "$@" | sed '$d'; }

test_shmm_ls_and_stat_equal_ipcs_for_odd_private_and_removed_segments() {
    next_key
    local first_key=$key held=() id
    next_key
    hold_segments "$first_key" "$key" || return 1
    key=$first_key
    must "an odd size in ipcs" [ "$(ipcs_field "$key" 5)" == 3333 ] || return 1
    must "a dest segment with key 0 in ipcs" ipcs -m | grep -q "^0x00000000 ${held[2]} .* dest" ||
        return 1
    must "shmm.py ls to equal ipcs -m" same_output ipcs -m -- shmm ls || return 1
    for id in "${held[@]}"; do
        must "shmm.py stat $id to equal ipcs -m -i $id" same_output ipcs -m -i "$id" -- \
            all_but_the_last_line shmm stat "$id" || return 1
    done
    # Its last line: the mode as the tutorial printed it, in decimal (0640 is 416).
    must "shmm.py stat to end with the mode in decimal" [ "$(shmm stat "${held[0]}" | tail -n 1)" \
        == 'mode in decimal: 416 (as the tutorial printed it, "shm mode:416"; octal 0640)' ] ||
        return 1
    exec {input}>&-
    finish fixture 0 || return 1
    must "the fixture's segments gone" segment_gone "${held[0]}"
}

# Python code that runs shmm.py's command line with SHM_STAT_ANY replaced by
# a command number no kernel knows. Linux refuses it with EINVAL, as Linux
# before 4.17 and qemu-user 7.2 refuse SHM_STAT_ANY itself: ls and stat must
# take their fallback, /proc/sysvipc/shm, on any machine.
without_stat_any='import shmm, sys
shmm.SHM_STAT_ANY = 0x7fff
sys.exit(shmm.main(sys.argv[1:]))'
shmm_without_stat_any() { py "$without_stat_any" "$@"; }

test_shmm_ls_and_stat_equal_ipcs_where_shm_stat_any_is_refused() {
    next_key
    local first_key=$key held=() id
    next_key
    hold_segments "$first_key" "$key" || return 1
    must "shmm.py ls without SHM_STAT_ANY to equal ipcs -m" \
        same_output ipcs -m -- shmm_without_stat_any ls || return 1
    for id in "${held[@]}"; do
        must "shmm.py stat $id without SHM_STAT_ANY to equal ipcs -m -i $id" \
            same_output ipcs -m -i "$id" -- all_but_the_last_line shmm_without_stat_any stat "$id" ||
            return 1
    done
    # SHM_STAT would hide root's 0600 segments from nobody; ipcs shows them.
    if [[ -z $(why_not_nobody) ]]; then
        must "nobody's shmm.py ls without SHM_STAT_ANY to equal nobody's ipcs -m" \
            same_output as_nobody ipcs -m -- as_nobody env PYTHONPATH="$here" "$PYTHON_NOBODY" \
            -c "$without_stat_any" ls || return 1
    fi
    exec {input}>&-
    finish fixture 0
}

# rm_like_ipcrm -m SHMID | -M KEY: shmm.py rm fails as ipcrm does: exit
# status 1 and the same words (ours SHMID or --key KEY for ipcrm -m or -M).
rm_like_ipcrm() {
    local ours theirs status
    if [[ $1 == -m ]]; then ours=$(shmm rm "$2" 2>&1); else ours=$(shmm rm --key "$2" 2>&1); fi
    status=$?
    ours=$(sed 's/^\[Error\]\[[^]]*\]::rm: //; s/: IPC_PRIVATE.*//' <<<"$ours")
    theirs=$(ipcrm "$1" "$2" 2>&1 | sed 's/^ipcrm: //')
    must "shmm.py rm ($1 $2) to fail with status 1, not $status" [ $status == 1 ] || return 1
    must "shmm.py rm ($1 $2) to say what ipcrm says: '$theirs', not '$ours'" [ "$ours" == "$theirs" ]
}

test_shmm_rm_removes_what_ipcrm_would() {
    next_key
    local by_id by_key
    by_id=$(make_segment "") && shmids+=("$by_id")
    must "shmm.py rm SHMID to succeed" shmm rm "$by_id" || return 1
    must "it gone" segment_gone "$by_id" || return 1
    by_key=$(make_segment "") && shmids+=("$by_key")
    must "shmm.py rm --key KEY to succeed" shmm rm --key "$key" || return 1
    must "it gone" segment_gone "$by_key" || return 1
    rm_like_ipcrm -m "$by_id" || return 1
    rm_like_ipcrm -M "$key" || return 1
    rm_like_ipcrm -M 0x00000000 || return 1
    [[ -n $(why_not_nobody) ]] && return 0
    by_key=$(make_segment "") && shmids+=("$by_key")
    must "nobody to be refused like ipcrm" [ "$(as_nobody "$PYTHON_NOBODY" "$here/shmm.py" rm \
        "$by_key" 2>&1 | sed 's/.*::rm: //')" == "$(as_nobody ipcrm -m "$by_key" 2>&1 |
        sed 's/^ipcrm: //')" ] || return 1
    must "the segment still there" segment_exists "$by_key" || return 1
    ipcrm -m "$by_key"
}

test_shmm_key_equals_ipcs_and_the_formula() {
    next_key
    must "shmm.py key to print the formula's key" [ "$(shmm key --path "$work" --proj-id "$proj" -q)" \
        == "$key" ] || return 1
    start_reader a || return 1
    must "ipcs -m to show that key" [ "$(ipcs_field "$key" 1)" == "$key" ] || return 1
    shmm clean --path "$work" --proj-id "$proj" 2>"$work/clean.err"
    must "shmm.py clean to refuse a segment in use" [ $? == 3 ] || return 1
    must "the segment untouched" nattch_is 1 || return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

# The tutorial's text is not ours to commit: look for it in ../shared/seed
# beside the checkout, unless SEED_TEXT says where it is.
seed_text=${SEED_TEXT:-}
candidate=$here/../shared/seed/000_2519dfad12f01e0d.txt
[[ -z $seed_text && -r $candidate ]] && seed_text=$candidate

# why_no_tutorial_programs: print why the tutorial's C++ pair cannot be built.
why_no_tutorial_programs() {
    if ! command -v g++ >/dev/null; then
        echo "no C++ compiler (g++)"
    elif [[ ! -r $seed_text ]]; then
        echo "the tutorial's text was not found (set SEED_TEXT to its path)"
    fi
}

# build_tutorial_programs: a and b in $work/cpp, from the last C++ listing
# of the tutorial, with its ftok path changed to ours and nothing else
# (lessons.sh, whose lesson 11 runs them, knows how).
build_tutorial_programs() {
    [[ -x $work/cpp/a ]] && return 0
    SEED_TEXT=$seed_text PYTHON=$PYTHON "$here/lessons.sh" --build-tutorial "$work/cpp" "$work" \
        >"$work/g++.err" 2>&1 || { sed 's/^/#   /' "$work/g++.err"; return 1; }
    must "the ftok path to be ours" grep -q "PATHNAME \"$work\"" "$work/cpp/shmm.hpp"
}

# lines_arrive_one_by_one READER: type two lines on $input, each once READER
# has printed the one before: the tutorial's protocol would lose them if
# they came faster, as nothing tells the writer that the reader is done.
lines_arrive_one_by_one() {
    local line
    for line in "hello, shared memory" "你好，共享内存"; do
        echo "$line" >&"$input"
        must "'$line' to arrive" wait_for grep -q -x "Message received: $line" "$work/$1.out" ||
            return 1
    done
}

test_tutorial_cpp_writer_talks_to_our_processa() {
    skip_reason=$(why_no_tutorial_programs)
    [[ -z $skip_reason ]] || return 0
    use_proj 0x46 || return 1 # the tutorial's 0x1246, of which ftok keeps 0x46
    must "the tutorial's programs to build" build_tutorial_programs || return 1
    cd "$work/cpp" || return 1
    start a processa.py --seed-protocol
    must "processa to listen on ./myfifo" wait_for logged a "waiting for a writer on ./myfifo"
    open_input cb
    start_command cb ./b <"$work/cb.in"
    cd - >/dev/null || return 1
    lines_arrive_one_by_one a || return 1
    kill -TERM "${pid[cb]}" # it loops on fgets forever, even at end of input
    finish cb 143 && finish a 0 || return 1
    must "no segment, no ./myfifo" no_segment && [ ! -e "$work/cpp/myfifo" ]
}

test_our_processb_talks_to_the_tutorial_cpp_reader() {
    skip_reason=$(why_no_tutorial_programs)
    [[ -z $skip_reason ]] || return 0
    use_proj 0x46 || return 1
    must "the tutorial's programs to build" build_tutorial_programs || return 1
    cd "$work/cpp" || return 1
    start_command ca stdbuf -oL ./a # its printf would wait in a buffer otherwise
    must "a.cc to make its FIFO" wait_for [ -p myfifo ]
    open_input b
    start b processb.py --seed-protocol --mode 0666 <"$work/b.in" # a.cc uses 0666
    cd - >/dev/null || return 1
    must "nattch 2" wait_for nattch_is 2 || return 1
    lines_arrive_one_by_one ca || return 1
    exec {input}>&-
    finish b 0 && finish ca 0 || return 1
    must "no segment, no ./myfifo" no_segment && [ ! -e "$work/cpp/myfifo" ]
}

# --- Errors a hostile user finds ---------------------------------------------------

test_a_size_the_layout_cannot_hold_is_refused_saying_the_limit() {
    next_key
    "$PYTHON" "$here/processa.py" --path "$work" --proj-id "$proj" --size $(((4 << 30) + 128)) \
        </dev/null >"$work/big.out" 2>"$work/big.err"
    must "exit status 2 for 4 GiB + 128 bytes" [ $? == 2 ] || return 1
    must "one error line saying the limit" one_error big \
        "is more than 4294967295 (4 GiB - 1): the message layout stores sizes in 32 bits" ||
        return 1
    "$PYTHON" "$here/processb.py" --path "$work" --proj-id "$proj" --size 4294967295 --wait 0 \
        </dev/null >"$work/max.out" 2>"$work/max.err"
    must "the limit itself accepted (exit 5: no processa), not $?" [ $? == 5 ] || return 1
    must "nothing created" no_segment && no_fifos
}

test_wait_nan_inf_and_seed_protocol_with_raw_are_refused_and_wait_0_is_said_0() {
    next_key
    local bad status
    for bad in "--wait nan" "--wait inf" "--wait -1e-9" "--wait 1_0" "--seed-protocol --raw"; do
        # A wait of nan or inf never ends: give up after $deadline s.
        # shellcheck disable=SC2086 # each case is two words
        timeout "$deadline" "$PYTHON" "$here/processb.py" --path "$work" --proj-id "$proj" $bad \
            </dev/null >"$work/bad.out" 2>"$work/bad.err"
        status=$?
        must "processb.py $bad: exit status 2, not $status" [ $status == 2 ] || return 1
        must "processb.py $bad: one error line" one_error bad "" || return 1
    done
    "$PYTHON" "$here/processb.py" --path "$work" --proj-id "$proj" --wait -0 </dev/null \
        >"$work/b.out" 2>"$work/b.err"
    must "--wait -0: exit status 5" [ $? == 5 ] || return 1
    must "--wait -0: said as 0 s" one_error b "no segment at key $key after 0 s:" || return 1
    must "nothing created" no_segment && no_fifos
}

test_processb_at_a_terminal_without_readline_reads_plain_lines() {
    next_key
    mkdir -p "$work/no-readline"
    echo 'raise ImportError("this Python was built without readline")' \
        >"$work/no-readline/readline.py"
    start_reader a || return 1
    at_terminal eof "$work/no-readline"
    must "processb to end with 0 at Ctrl-D" [ $? == 0 ] || return 1
    finish a 0 || return 1
    must "the first line to arrive" grep -q -x "Message received: hello from a terminal, 你好" \
        "$work/a.out"
}

# says_like STATUS OURS -- THEIRS...: our command (run by the caller, its
# output OURS, its exit status STATUS) said in its last line what THEIRS
# says, after each program's prefix; and exited 2 where THEIRS could not
# parse a number (a bad command line, as for every program here), else 1.
says_like() {
    local status=$1 ours theirs expected=1
    ours=$(tail -n 1 <<<"$2" | sed -E 's/^.*: error: argument [^:]*: //; s/^\[Error\]\[[^]]*\]::rm: //')
    theirs=$("${@:4}" 2>&1 | sed -E 's/^(ipcrm|ipcs): //')
    [[ $theirs == "failed to parse"* ]] && expected=2
    must "'$ours' to be '$theirs' (${*:4})" [ "$ours" == "$theirs" ] || return 1
    must "exit status $expected, not $status (${*:4})" [ "$status" == $expected ]
}

test_shmm_rm_and_stat_parse_ids_and_keys_as_ipcrm_and_act_on_no_other() {
    next_key
    local gone live value ours
    gone=$(make_segment "") && shmids+=("$gone") && ipcrm -m "$gone"
    live=$(make_segment "") && shmids+=("$live")
    # Spellings of an id that no longer exists, and ones that are no id;
    # never one that might be someone else's segment: ipcrm acts on it.
    for value in $((live + 4294967296)) -1 -2147483649 2147483648 abc "" 1x 0x10 1_0 \
        " $gone" "0$gone" "+$gone" "$gone "; do
        ours=$(shmm rm "$value" 2>&1)
        says_like $? "$ours" -- ipcrm -m "$value" || return 1
    done
    for value in $((live + 4294967296)) 2147483648 abc "" 1x; do
        ours=$(shmm stat "$value" 2>&1)
        says_like $? "$ours" -- ipcs -m -i "$value" || return 1
    done
    must "shmid $live untouched by rm and stat of $((live + 4294967296))" \
        segment_exists "$live" || return 1
    ipcrm -m "$live"
    use_proj 0x95 || return 1 # a key with the top bit set, spelled negative too
    for value in "$key" $((key)) "$(printf '0%o' "$key")" " $key" $((key - 4294967296)) 0x zz; do
        ours=$(shmm rm --key "$value" 2>&1)
        says_like $? "$ours" -- ipcrm -M "$value" || return 1
    done
    # ipcrm -M cuts a key to 32 bits, and would remove this one: we refuse.
    live=$(make_segment "") && shmids+=("$live")
    ours=$(shmm rm --key $((key + 4294967296)) 2>&1)
    must "exit status 2 for key $((key + 4294967296)), not $?" [ $? == 2 ] || return 1
    must "the range said" grep -q -F \
        "failed to parse argument: '$((key + 4294967296))': Numerical result out of range" \
        <<<"$ours" || return 1
    must "the segment at $key untouched" segment_exists "$live" || return 1
    ipcrm -m "$live"
}

# loop_started_again_or_ended: the shell loop of the test below has started
# its command a second time, or has ended.
loop_started_again_or_ended() { [[ -s $work/loop.runs ]] || ended loop; }

test_ctrl_c_stops_a_shell_loop_around_either_program() {
    local program waiting signum
    for program in processa.py processb.py; do
        next_key
        waiting="waiting for processb"
        [[ $program == processb.py ]] && waiting="waiting up to"
        : >"$work/loop.runs"
        # A script of its own, in a process group of its own, as a terminal
        # has it: Ctrl-C sends SIGINT to the whole foreground group.
        # shellcheck disable=SC2016 # expanded by that bash, from its arguments
        start_command loop setsid env --default-signal=INT,QUIT bash -c 'for i in 1 2 3; do
            "$0" "$1" --path "$2" --proj-id "$3" </dev/null 2>"$4.$i.err"
            echo "run $i ended with $?" >>"$4.runs"
        done' "$PYTHON" "$here/$program" "$work" "$proj" "$work/loop"
        must "$program to wait" wait_for logged loop.1 "$waiting" 2>/dev/null || return 1
        kill -INT -- -"${pid[loop]}"
        must "$program to stop the loop, or the loop to go on" \
            wait_for loop_started_again_or_ended || return 1
        must "the loop to stop at once, not: $(cat "$work/loop.runs")" \
            [ ! -s "$work/loop.runs" ] || return 1
        finish loop 130 || return 1
        must "$program to say so" logged loop.1 "stopped by SIGINT" || return 1
        must "nothing left" no_segment && no_fifos || return 1
    done
    # Death by signal looks the same in $? as before: 128 + N.
    for signum in 1 15; do
        start_command alone env PYTHONPATH="$here" "$PYTHON" -c 'import os, shmm, sys
def stop():
    os.kill(os.getpid(), int(sys.argv[1]))
    return 0
shmm.run("test", stop)' "$signum"
        finish alone $((128 + signum)) || return 1
    done
}

# in_private_mounts COMMAND...: run COMMAND in a mount namespace of its own
# (as root, or as a normal user mapped to root in a user namespace), where
# what it mounts is seen by nobody else and goes when it ends.
in_private_mounts() {
    if [[ $(id -u) == 0 ]]; then unshare -m "$@"; else unshare -r -m "$@"; fi
}

# why_no_private_mounts: print why this run cannot mount a tmpfs of its own.
why_no_private_mounts() {
    mkdir -p "$work/probe"
    if ! command -v unshare >/dev/null; then
        echo "no unshare(1)"
    elif ! in_private_mounts mount -t tmpfs none "$work/probe" 2>/dev/null; then
        echo "unshare -m (or -r -m) and mount -t tmpfs are not allowed here"
    fi
}

# file_with_key_minus_1: in a private mount namespace, mount tmpfs after
# tmpfs until one's device number ends in 0xff (each takes the next free
# minor), make files in it until one's inode ends in 0xffff (tmpfs counts
# inodes up from 1), and run `shmm.py key` and processb on that file with
# project id 0xff: ftok gives 0xff << 24 | 0xff << 16 | 0xffff, which is -1.
file_with_key_minus_1() {
    # shellcheck disable=SC2016 # expanded by that bash, from its arguments
    in_private_mounts bash -c 'work=$1 here=$2 python=$3
    for i in $(seq 300); do
        mkdir -p "$work/mnt/$i"
        mount -t tmpfs -o size=64m none "$work/mnt/$i" || exit 1
        ((($(stat -c %d "$work/mnt/$i") & 0xff) == 0xff)) && break
    done
    file=$("$python" -c "import os, sys
for n in range(1 << 17):
    path = f\"{sys.argv[1]}/{n}\"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
    if os.stat(path).st_ino & 0xFFFF == 0xFFFF:
        sys.exit(print(path))
    os.unlink(path)
sys.exit(1)" "$work/mnt/$i") || exit 1
    echo "st_dev $(stat -c %d "$file"), st_ino $(stat -c %i "$file")" >"$work/minus1.file"
    "$python" "$here/shmm.py" key --path "$file" --proj-id 0xff -q >"$work/minus1.key" \
        2>"$work/minus1.err"
    "$python" "$here/processb.py" --path "$file" --proj-id 0xff --wait 0 </dev/null \
        >/dev/null 2>"$work/b.err"
    echo $? >"$work/minus1.status"' bash "$work" "$here" "$PYTHON"
}

test_ftok_key_0xffffffff_is_a_key_not_an_error() {
    skip_reason=$(why_no_private_mounts)
    [[ -z $skip_reason ]] || return 0
    global_lock || return 1
    if [[ -n $(shmid_of 0xffffffff) ]]; then
        skip "a segment exists at key 0xffffffff: processb would find it"
        return 0
    fi
    must "a file whose st_dev ends in 0xff and st_ino in 0xffff" file_with_key_minus_1 ||
        return 1
    local made
    made="$(cat "$work/minus1.file"), not: $(cat "$work/minus1.key" "$work/minus1.err")"
    must "shmm.py key to print 0xffffffff for $made" \
        [ "$(cat "$work/minus1.key")" == 0xffffffff ] || return 1
    must "processb to look for key 0xffffffff (exit 5), not $(cat "$work/minus1.status")" \
        [ "$(cat "$work/minus1.status")" == 5 ] || return 1
    must "one error line" one_error b "no segment at key 0xffffffff after 0 s"
}

test_another_users_segment_is_refused_with_advice_that_works() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    next_key
    start_reader a || return 1
    as_nobody /usr/bin/python3 "$here/processb.py" --path "$work" --proj-id "$proj" --wait 5 \
        </dev/null >"$work/n.out" 2>"$work/n.err"
    must "exit status 4 for nobody" [ $? == 4 ] || return 1
    must "one error line saying whose it is and who can use it" one_error n \
        "was made by uid $(id -u), and its mode 0600 does not let uid $(id -u nobody) read it; run processb as uid $(id -u), the user who runs processa" ||
        return 1
    if grep -q -- --mode "$work/n.err"; then
        diag "expected: no advice to use --mode, which cannot let another user in"
        return 1
    fi
    message_gets_through a "as the user who runs processa" # the advice, followed
}

# nobody_runs NAME PROGRAM ARGS...: start PROGRAM as nobody, with this test's key.
nobody_runs() {
    nobody_env
    start_command "$1" "${nobody_env[@]}" --default-signal=INT,QUIT setpriv --reuid=nobody \
        --regid="$(id -g nobody)" --clear-groups /usr/bin/python3 "$here/$2" --path "$work" \
        --proj-id "$proj" "${@:3}"
}

test_a_mode_0_segment_of_ones_own_is_named_so_and_removing_it_clears_the_way() {
    local id made_dir=""
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    next_key
    global_lock || return 1
    # The tutorial's b.cc, started first, makes the segment with mode 0.
    as_nobody /usr/bin/python3 -c 'import sys; sys.path[0] = sys.argv[1]
import shmm
shmm.Segment.create(int(sys.argv[2], 0), 4096, 0)' "$here" "$key" || return 1
    id=$(shmid_of "$key") && shmids+=("$id")
    nobody_runs b processb.py --wait 5 </dev/null
    finish b 4 || return 1
    must "processb to say it is ours, with mode 0" one_error b \
        "shmid $id is yours, but its mode 0000 lets not even you read it" || return 1
    nobody_runs a processa.py </dev/null
    finish a 3 || return 1
    must "processa to say so too, and how to remove it" one_error a \
        "key $key: shmid $id is yours, but its mode 0000 lets not even you read it" || return 1
    must "and how to remove it" one_error a "remove it with \`ipcrm -m $id\`" || return 1
    # The advice, followed: nobody removes it, and processa starts.
    must "nobody to remove it with ipcrm -m $id" as_nobody ipcrm -m "$id" || return 1
    [[ -e /tmp/shmm-$(id -u nobody) ]] || made_dir=/tmp/shmm-$(id -u nobody)
    nobody_runs a processa.py </dev/null
    must "processa to listen" wait_for logged a "waiting for processb" || return 1
    echo "after ipcrm" >"$work/sender.in"
    nobody_runs sender processb.py <"$work/sender.in"
    finish sender 0 && finish a 0 || return 1
    [[ -z $made_dir ]] || rmdir "$made_dir"
    must "the line to arrive" grep -q -x "Message received: after ipcrm" "$work/a.out"
}

# status_of NAME: wait for NAME, which has ended, and print its exit status.
status_of() {
    { wait "${pid[$1]}"; } 2>/dev/null
    echo $?
    unset "pid[$1]"
}

test_the_loser_of_two_racing_processb_is_told_busy_not_absent() {
    local round w status winners
    printf 'one line\n' >"$work/short.in"
    for round in 1 2 3 4 5 6 7 8; do
        next_key
        start_reader a || return 1
        start w1 processb.py -v --wait 1 <"$work/short.in"
        start w2 processb.py -v --wait 1 <"$work/short.in"
        must "both writers to end" wait_for ended w1 && wait_for ended w2 || return 1
        finish a 0 || return 1
        winners=0
        for w in w1 w2; do
            status=$(status_of $w)
            [[ $status == 0 ]] && winners=$((winners + 1)) && continue
            # One that started after processa had gone was right to say so
            # (5); one that met processa between its two open(2) calls
            # (ENXIO), and gave up on it, was not.
            if grep -q ENXIO "$work/$w.err"; then
                must "round $round: $w, which met processa, to be refused as busy (6), not $status" \
                    [ "$status" == 6 ] || return 1
            fi
        done
        must "round $round: one winner, not $winners" [ $winners == 1 ] || return 1
    done
}

test_a_fifo_directory_held_hostage_is_escaped_with_shmm_fifo_dir() {
    local hostage status nobody_dir
    nobody_dir_free || return 0
    hostage=$nobody_dir
    next_key
    mkdir -m 0700 "$hostage" # root plants it first: nobody can neither use nor remove it
    escape_with_shmm_fifo_dir "$hostage"
    status=$?
    rmdir "$hostage"
    return $status
}

# escape_with_shmm_fifo_dir HOSTAGE: nobody's processa is refused HOSTAGE,
# and, following the advice, works with SHMM_FIFO_DIR.
escape_with_shmm_fifo_dir() {
    as_nobody /usr/bin/python3 "$here/processa.py" --path "$work" --proj-id "$proj" </dev/null \
        >"$work/n.out" 2>"$work/n.err"
    must "exit status 1, not $?" [ $? == 1 ] || return 1
    must "one error line naming the way out" one_error n \
        "Name a directory of your own with SHMM_FIFO_DIR=DIR, for processa and processb alike" ||
        return 1
    if as_nobody rmdir "$1" 2>/dev/null; then
        diag "expected: nobody unable to remove $1, as the message says"
        return 1
    fi
    # The way out: a directory of nobody's own, which processa makes.
    mkdir -m 0755 "$work/nobody" && chown nobody "$work/nobody" && chmod o+x "$work"
    nobody_fifo_dir=$work/nobody/fifos nobody_runs a processa.py </dev/null
    must "processa to listen in SHMM_FIFO_DIR" wait_for logged a \
        "waiting for processb on $work/nobody/fifos/$key.notify" || return 1
    echo "through SHMM_FIFO_DIR" >"$work/sender.in"
    nobody_fifo_dir=$work/nobody/fifos nobody_runs sender processb.py <"$work/sender.in"
    finish sender 0 || return 1
    finish a 0 || return 1
    must "the line to arrive" grep -q -x "Message received: through SHMM_FIFO_DIR" "$work/a.out" ||
        return 1
    # The directory named must pass the same checks: a symlink is refused.
    ln -s "$work/nobody/fifos" "$work/nobody/link"
    nobody_fifo_dir=$work/nobody/link as_nobody /usr/bin/python3 "$here/processa.py" \
        --path "$work" --proj-id "$proj" </dev/null >"$work/n.out" 2>"$work/n.err"
    must "exit status 1 for a symlink" [ $? == 1 ] || return 1
    must "one error line" one_error n "$work/nobody/link must be a directory of uid" || return 1
    must "no segment left" no_segment
}

test_after_kill_9_of_the_tutorial_protocol_the_advice_given_clears_the_way() {
    next_key
    mkdir "$work/seed" && cd "$work/seed" || return 1
    start a processa.py --seed-protocol
    must "processa to make ./myfifo" wait_for logged a "waiting for a writer on ./myfifo" ||
        return 1
    open_input b
    start b processb.py --seed-protocol <"$work/b.in"
    cd - >/dev/null || return 1
    echo "a line in the tutorial's format" >&"$input"
    must "the line to arrive" wait_for grep -q "tutorial's format" "$work/a.out" || return 1
    local left
    left=$(shmid_of "$key")
    kill -KILL "${pid[a]}"
    finish a 137 && finish b 7 || return 1
    exec {input}>&-
    must "its segment and ./myfifo left behind" [ -n "$left" ] && [ -p "$work/seed/myfifo" ] ||
        return 1
    cd "$work/seed" || return 1
    start a2 processa.py --seed-protocol
    cd - >/dev/null || return 1
    finish a2 3 || return 1
    must "one error line naming the command that removes it" one_error a2 "ipcrm -m $left" ||
        return 1
    ipcrm -m "$left" # the advice, followed
    cd "$work/seed" || return 1
    start a3 processa.py --seed-protocol
    cd - >/dev/null || return 1
    must "then processa to start, replacing ./myfifo" wait_for logged a3 "replacing myfifo" ||
        return 1
    kill -TERM "${pid[a3]}"
    finish a3 143 || return 1
    must "no segment, no ./myfifo" no_segment && [ ! -e "$work/seed/myfifo" ]
}

test_processb_s_advice_after_a_crash_works_from_any_directory() {
    next_key
    start_reader a || return 1
    kill -KILL "${pid[a]}"
    finish a 137 || return 1
    start b processb.py --wait 0.2 </dev/null
    finish b 5 || return 1
    local advice
    # shellcheck disable=SC2016 # the backquotes are processb's, not a command
    advice=$(sed -n 's/.*if processa crashed, `\([^`]*\)` removes what it left.*/\1/p' \
        "$work/b.err")
    must "processb to name the command" [ -n "$advice" ] || return 1
    (cd / && eval "$advice") 2>"$work/clean.err"
    must "the advice, followed from /, to succeed" [ $? == 0 ] || return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

test_a_notify_fifo_removed_while_processa_waits_is_one_error() {
    local how
    for how in "before any writer" "after a writer left"; do
        next_key
        start_reader a || return 1
        if [[ $how == "after a writer left" ]]; then
            # A writer comes (opens ack, then notify), and leaves without a
            # word once the notify FIFO is gone.
            exec {reader}<>"$fifo_dir/$key.ack" {writer}>"$fifo_dir/$key.notify"
            rm "$fifo_dir/$key.notify"
            exec {writer}>&- {reader}<&-
        else
            rm "$fifo_dir/$key.notify"
            start b processb.py --wait 1 </dev/null
            finish b 5 || return 1
        fi
        finish a 1 || return 1
        must "one error line saying what happened ($how)" one_error a \
            "notify was removed or replaced while processa waited" || return 1
        must "no segment, no FIFOs ($how)" no_segment && no_fifos || return 1
    done
}

test_a_byte_invalid_in_the_terminal_s_encoding_is_no_traceback() {
    next_key
    start_reader a || return 1
    py 'import os, pty, select, subprocess, sys, time
here, work, proj = sys.argv[1:4]
master, terminal = pty.openpty()
b = subprocess.Popen([sys.executable, f"{here}/processb.py", "--path", work, "--proj-id", proj],
                     stdin=terminal, stdout=subprocess.DEVNULL, stderr=terminal,
                     env={**os.environ, "TERM": "dumb", "PYTHONIOENCODING": "utf-8"})
seen, deadline = b"", time.monotonic() + 30
def prompts(count):
    global seen
    while seen.count(b"Please enter: ") < count and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 65536)
    return seen.count(b"Please enter: ") >= count
for number, typed in enumerate((b"ok\r", b"\xff\xfe\r", b"\x04"), 1):
    assert prompts(number), seen
    os.write(master, typed)
status = b.wait(timeout=30)
sys.exit(1 if status or b"Traceback" in seen else 0)' "$here" "$work" "$proj"
    must "processb to end well, without a traceback" [ $? == 0 ] || return 1
    finish a 0
}

test_odd_settings_and_outputs_are_one_line_each() {
    next_key
    "$PYTHON" "$here/processa.py" --path "$work" --proj-id "$proj" --mode 0400 2>"$work/m.err"
    must "--mode 0400: exit 2" [ $? == 2 ] || return 1
    must "--mode 0400: one line saying why" one_error m "would lock processa out" || return 1
    SHMM_FIFO_DIR=relative "$PYTHON" "$here/processa.py" --path "$work" --proj-id "$proj" \
        2>"$work/r.err"
    must "a relative SHMM_FIFO_DIR: exit 2" [ $? == 2 ] || return 1
    must "a relative SHMM_FIFO_DIR: one line" one_error r "must be an absolute path" || return 1
    SHMM_FIFO_DIR=$work/no/such "$PYTHON" "$here/processa.py" --path "$work" --proj-id "$proj" \
        2>"$work/p.err"
    must "a FIFO directory without a parent: exit 1" [ $? == 1 ] || return 1
    must "a FIFO directory without a parent: one line" one_error p "parent must be" || return 1
    shmm key >&- 2>"$work/k.err"
    must "shmm.py key with stdout closed: exit 1" [ $? == 1 ] || return 1
    must "shmm.py key with stdout closed: one line" one_error k "stdout is closed" || return 1
    shmm ls >/dev/full 2>"$work/l.err"
    must "shmm.py ls into a full disk: exit 1" [ $? == 1 ] || return 1
    must "shmm.py ls into a full disk: one line" one_error l "writing to stdout: ENOSPC" || return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

# --- What a careful attacker tried: the tutorial's writer, hangs, advice -------------

# in_dir DIR NAME PROGRAM ARGS...: start PROGRAM (as start does) from DIR,
# where the tutorial's protocol finds ./myfifo.
in_dir() {
    cd "$1" || return 1
    start "${@:2}"
    cd - >/dev/null || return 1
}

# seed_writer DIR PROJ [ARGS...]: processb --seed-protocol from DIR, for key
# PROJ, sending two lines; stderr in $work/sw.err; return its exit status.
seed_writer() {
    (cd "$1" && printf 'one\ntwo\n' | "$PYTHON" "$here/processb.py" --seed-protocol --path "$work" \
        --proj-id "$2" --wait 2 "${@:3}" >/dev/null 2>"$work/sw.err")
}

test_the_tutorial_protocol_writer_never_writes_into_a_file_or_a_symlink_named_myfifo() {
    local planted status
    next_key
    mkdir "$work/reader" "$work/planted"
    in_dir "$work/reader" a processa.py --seed-protocol || return 1
    must "processa to listen on ./myfifo" wait_for logged a "waiting for a writer on ./myfifo" ||
        return 1
    printf 'IMPORTANT DATA\n' >"$work/planted/target"
    for planted in "regular file" symlink; do
        rm -f "$work/planted/myfifo"
        if [[ $planted == symlink ]]; then
            ln -s "$work/planted/target" "$work/planted/myfifo"
        else
            cp "$work/planted/target" "$work/planted/myfifo"
        fi
        seed_writer "$work/planted" "$proj"
        status=$?
        must "exit 1 for a $planted named myfifo, not $status" [ $status == 1 ] || return 1
        must "one error line" one_error sw "./myfifo is a $planted, not the tutorial's FIFO" ||
            return 1
        must "the $planted's data untouched" \
            [ "$(cat "$work/planted/myfifo")" == "IMPORTANT DATA" ] || return 1
    done
    must "the reader of another directory to have printed nothing" [ ! -s "$work/a.out" ] ||
        return 1
    kill -TERM "${pid[a]}"
    finish a 143
}

test_the_tutorial_protocol_writer_talks_only_to_the_reader_of_its_key() {
    local ours ours_key seed other
    next_key
    ours=$proj ours_key=$key
    start_reader a || return 1 # our own protocol, at the first key
    next_key
    seed=$proj
    mkdir "$work/d" "$work/e"
    in_dir "$work/d" s processa.py --seed-protocol || return 1
    must "the tutorial-protocol reader to listen" wait_for logged s "waiting for a writer" ||
        return 1
    seed_writer "$work/d" "$ours"
    must "exit 3 for a segment of our own protocol, not $?" [ $? == 3 ] || return 1
    must "one error line saying so" one_error sw \
        "is laid out by a processa of this project's own protocol, not the tutorial's" || return 1
    next_key
    other=$proj
    in_dir "$work/e" s2 processa.py --seed-protocol || return 1
    must "a second tutorial-protocol reader to listen" wait_for logged s2 "waiting for a writer" ||
        return 1
    seed_writer "$work/d" "$other" # ./myfifo of the key-2 reader, the segment of key 3
    must "exit 3 for a ./myfifo its segment's creator does not hold, not $?" [ $? == 3 ] ||
        return 1
    must "one error line naming the creator" one_error sw "is not held by pid ${pid[s2]}" ||
        return 1
    must "neither reader to have printed anything" [ ! -s "$work/s.out" ] && [ ! -s "$work/s2.out" ] ||
        return 1
    proj=$seed
    start b processb.py --wait 1 </dev/null # our protocol, to a tutorial-protocol reader
    finish b 5 || return 1
    must "one error line with advice that fits" one_error b \
        "run processb with --seed-protocol, in the directory where it runs" || return 1
    if grep -q "clean" "$work/b.err"; then
        diag "expected: no advice to clean what a live reader holds" && return 1
    fi
    proj=$ours key=$ours_key
    message_gets_through a "the first key's processa untouched" || return 1
    kill -TERM "${pid[s]}" "${pid[s2]}"
    finish s 143 && finish s2 143
}

# peak_kb INPUT COMMAND...: run COMMAND with INPUT on stdin, its output thrown
# away, and print the most memory it held (ru_maxrss, in KiB; wait4(2)). A
# measure rather than a ulimit -v: under qemu-user the interpreter's address
# space is qemu's, whose translation buffer alone is larger than any limit
# that would tell a line read whole from one read in pieces.
peak_kb() {
    py 'import os, subprocess, sys
with open(sys.argv[1], "rb") as given:
    child = subprocess.Popen(sys.argv[2:], stdin=given, stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8)' "$@"
}

test_the_tutorial_protocol_writer_sends_an_endless_line_in_bounded_memory() {
    local input peak=()
    next_key
    mkdir "$work/endless"
    printf 'short\n' >"$work/short.in"
    head -c 120000000 /dev/zero >"$work/endless.in"
    # One short line, then 120 MB of one line, each to a reader of its own:
    # read as fgets(3) does, 4095 bytes at a time, never whole, the second
    # holds no more than the first.
    for input in short endless; do
        in_dir "$work/endless" a processa.py --seed-protocol || return 1
        must "processa to listen" wait_for logged a "waiting for a writer" || return 1
        peak+=("$(cd "$work/endless" && peak_kb "$work/$input.in" "$PYTHON" "$here/processb.py" \
            --seed-protocol --path "$work" --proj-id "$proj" 2>"$work/b.err")")
        must "processb to end well, not $?" [ $? == 0 ] || { sed 's/^/#   /' "$work/b.err"; return 1; }
        finish a 0 || return 1
        must "messages to have arrived" grep -q "^Message received: " "$work/a.out" || return 1
    done
    rm "$work/endless.in"
    must "an endless line in bounded memory: ${peak[0]} KiB for one short line, ${peak[1]} KiB for 120 MB" \
        [ "${peak[1]}" -lt $((peak[0] + 40000)) ]
}

test_the_tutorial_protocol_writer_refuses_a_segment_with_no_room_for_a_line() {
    local tiny
    next_key
    mkdir "$work/tiny"
    open_input holder
    # A reader of the tutorial's kind, but of a 1-byte segment: it makes the
    # segment and ./myfifo, and holds the FIFO open.
    cd "$work/tiny" || return 1
    start_command holder env PYTHONPATH="$here" "$PYTHON" -c 'import os, shmm, sys
print(shmm.Segment.create(int(sys.argv[1], 0), 1, 0o600).shmid, flush=True)
os.mkfifo("myfifo", 0o600)
fifo = os.open("myfifo", os.O_RDONLY | os.O_NONBLOCK)
sys.stdin.read()' "$key" <"$work/holder.in"
    cd - >/dev/null || return 1
    must "the holder to make its segment" wait_for [ -s "$work/holder.out" ] || return 1
    tiny=$(cat "$work/holder.out") && shmids+=("$tiny")
    seed_writer "$work/tiny" "$proj" --size 1
    must "exit 3, not 0 with nothing sent: $?" [ $? == 3 ] || return 1
    must "one line saying why" one_error sw "has 1 byte: no room for a line and its NUL" || return 1
    exec {input}>&-
    finish holder 0 && ipcrm -m "$tiny"
}

test_a_tutorial_reader_never_replaces_another_user_s_myfifo() {
    next_key
    mkdir "$work/theirs"
    mkfifo -m 0666 "$work/theirs/myfifo"
    if ! chown nobody "$work/theirs/myfifo" 2>/dev/null; then
        skip "not root: cannot give a FIFO to another user"
        return 0
    fi
    in_dir "$work/theirs" a processa.py --seed-protocol || return 1
    finish a 1 || return 1
    must "one line naming its owner, and the way out" one_error a \
        "myfifo is a FIFO of nobody (uid $(id -u nobody)), not ours to replace" || return 1
    must "their FIFO still there" [ -p "$work/theirs/myfifo" ] || return 1
    must "and still theirs" [ "$(stat -c %U "$work/theirs/myfifo")" == nobody ] || return 1
    must "no segment" no_segment
}

test_a_stray_signal_leaves_processb_at_the_prompt_watching_for_processa() {
    next_key
    start_reader a || return 1
    py 'import os, pty, select, signal, subprocess, sys, time
here, work, proj, reader = sys.argv[1:5]
master, terminal = pty.openpty()
b = subprocess.Popen([sys.executable, f"{here}/processb.py", "--path", work, "--proj-id", proj],
                     stdin=terminal, stdout=subprocess.DEVNULL, stderr=terminal,
                     env={**os.environ, "TERM": "dumb"})
def until(condition, what):
    seen, deadline = b"", time.monotonic() + 30
    while not condition(seen):
        assert time.monotonic() < deadline, f"{what}: {seen!r}"
        if select.select([master], [], [], 0.05)[0]:
            seen += os.read(master, 65536)
    return seen
until(lambda seen: b"Please enter: " in seen, "a prompt")
def polling(task):
    with open(f"/proc/{b.pid}/task/{task}/wchan") as wchan:
        return "poll" in wchan.read()
# The watcher is the thread in poll(2) (under qemu-user, qemu has threads of its own).
others = lambda: [task for task in os.listdir(f"/proc/{b.pid}/task") if int(task) != b.pid]
until(lambda _: any(polling(task) for task in others()), "the watcher to poll")
[watcher] = [task for task in others() if polling(task)]
def watcher_state():
    with open(f"/proc/{b.pid}/task/{watcher}/wchan") as wchan, \
            open(f"/proc/{b.pid}/task/{watcher}/status") as status:
        switches = [row for row in status if row.startswith("voluntary_ctxt_switches")]
        return "poll" in wchan.read(), int(switches[0].split()[1])
until(lambda _: watcher_state()[0], "the watcher to poll")
before = watcher_state()[1]
os.kill(b.pid, signal.SIGURG)  # what the watcher pokes with, from outside: no news
os.kill(b.pid, signal.SIGWINCH)
# The watcher wakes for it, and must go back to polling for processa.
until(lambda _: watcher_state() [0] and watcher_state()[1] > before, "the watcher to poll again")
os.kill(int(reader), signal.SIGTERM)
status = b.wait(timeout=30)
sys.exit(0 if status == 7 else 1)' "$here" "$work" "$proj" "${pid[a]}"
    must "processb at the prompt to notice processa went away after stray signals (exit 7)" \
        [ $? == 0 ] || return 1
    finish a 143
}

test_processb_counts_only_the_mode_bits_that_let_others_in() {
    local mode who
    for mode in 0700 0640 0604 0646 0666; do
        next_key
        start_reader a --mode "$mode" || return 1
        start b processb.py </dev/null
        if [[ $mode == 0700 ]]; then
            must "--mode 0700 gives nobody else anything: processb sends" finish b 0 || return 1
            finish a 0 || return 1
            continue
        fi
        finish b 3 || return 1
        case $mode in
        0640) who="members of group $(id -gn) (gid $(id -g)) can read what you send" ;;
        0604) who="every other user can read what you send" ;;
        0646) who="members of group $(id -gn) (gid $(id -g)) can read, and every other user can read and change what you send" ;;
        *) who="members of group $(id -gn) (gid $(id -g)) and every other user can read and change what you send" ;;
        esac
        must "one error line saying who gets what for $mode" one_error b \
            "has mode $mode, more open than --mode 0600: $who. Pass --mode $mode" || return 1
        kill -TERM "${pid[a]}"
        finish a 143 || return 1
    done
}

# default_key_reader: start processa at the default key (this checkout, the
# default project id) as d, under the global lock; return 1 with a reason in
# skip_reason if some other segment is there already.
default_key_reader() {
    global_lock || return 1
    local default
    default=$(shmm key -q) && keys+=("$default")
    if [[ -n $(shmid_of "$default") ]]; then
        skip "a segment exists at the default key $default: not ours to disturb"
        return 1
    fi
    start_command d env --default-signal=INT,QUIT "$PYTHON" "$here/processa.py"
    must "processa at the default key to listen" wait_for logged d "waiting for processb"
}

test_make_demo_runs_at_a_key_of_its_own_even_twice_at_once() {
    local demo status
    default_key_reader || { [[ -n $skip_reason ]] && return 0; return 1; }
    for demo in 1 2; do
        start_command "demo$demo" make -s -C "$here" demo </dev/null
    done
    for demo in 1 2; do
        finish "demo$demo" 0 || return 1
        must "demo $demo to print its four lines" \
            [ "$(grep -c "^Message received: " "$work/demo$demo.out")" == 4 ] || return 1
    done
    must "the processa at the default key untouched" running d || return 1
    must "and still waiting, having printed nothing" [ ! -s "$work/d.out" ] || return 1
    "$PYTHON" "$here/processb.py" <<<"for the default key" 2>"$work/db.err"
    must "its processb to end well" [ $? == 0 ] || return 1
    finish d 0 || return 1
    must "the line to arrive at the default key" \
        grep -q -x "Message received: for the default key" "$work/d.out"
}

test_shmm_rm_takes_several_keys_and_ids_as_ipcrm_does() {
    local ids=() keyed=() k
    for k in 1 2 3; do
        next_key
        ids+=("$(make_segment "")") && shmids+=("${ids[-1]}") && keyed+=("$key")
    done
    must "rm --key K1 --key K2 SHMID3 to succeed" shmm rm --key "${keyed[0]}" --key "${keyed[1]}" \
        "${ids[2]}" || return 1
    for k in 0 1 2; do
        must "segment ${ids[k]} gone" segment_gone "${ids[k]}" || return 1
    done
    shmm rm 2>"$work/rm.err"
    must "rm with nothing to remove: exit 2, not $?" [ $? == 2 ] || return 1
    must "one error line" one_error rm "name what to remove"
}

test_fifo_directory_advice_never_asks_to_change_a_directory_we_did_not_make() {
    local dir
    : >"$work/a-file"
    for dir in /tmp "$work/a-file"; do
        next_key
        SHMM_FIFO_DIR=$dir "$PYTHON" "$here/processa.py" --path "$work" --proj-id "$proj" \
            </dev/null >/dev/null 2>"$work/fd.err"
        must "SHMM_FIFO_DIR=$dir: exit 1, not $?" [ $? == 1 ] || return 1
        must "one error line asking for a private directory of one's own" one_error fd \
            "SHMM_FIFO_DIR must name a private directory of your own" || return 1
        if grep -q -E "chmod|remove it" "$work/fd.err"; then
            diag "expected: no advice to change $dir" && return 1
        fi
        must "no segment" no_segment || return 1
    done
    must "a regular file called so" grep -q "this is a regular file" "$work/fd.err"
}

# why_no_private_ipc: print why this run cannot have an IPC namespace of its own.
why_no_private_ipc() {
    if ! command -v unshare >/dev/null; then
        echo "no unshare(1)"
    elif ! in_private_ipc sh -c 'echo 1 >/proc/sys/kernel/shm_rmid_forced' 2>/dev/null; then
        echo "unshare --ipc (or -r --ipc) and setting shm_rmid_forced are not allowed here"
    fi
}
in_private_ipc() {
    if [[ $(id -u) == 0 ]]; then unshare --ipc "$@"; else unshare -r --ipc "$@"; fi
}

test_kernel_shm_rmid_forced_ends_a_clean_run_cleanly() {
    skip_reason=$(why_no_private_ipc)
    [[ -z $skip_reason ]] || return 0
    next_key
    # In an IPC namespace of its own, where segments die at their last detach.
    # shellcheck disable=SC2016 # expanded by that bash, from its arguments
    in_private_ipc bash -c 'echo 1 >/proc/sys/kernel/shm_rmid_forced
        "$0" "$1/processa.py" --path "$2" --proj-id "$3" >"$2/f.out" 2>"$2/f.err" & reader=$!
        for i in $(seq 600); do grep -q "waiting for processb" "$2/f.err" && break; sleep 0.05; done
        echo "with shm_rmid_forced" | "$0" "$1/processb.py" --path "$2" --proj-id "$3" 2>"$2/fb.err"
        wait $reader' "$PYTHON" "$here" "$work" "$proj"
    must "processa to end well, not $?" [ $? == 0 ] || { sed 's/^/#   /' "$work/f.err"; return 1; }
    must "the line through" grep -q -x "Message received: with shm_rmid_forced" "$work/f.out" ||
        return 1
    must "its segment removed by itself" logged f "removed shmid .* (IPC_RMID)" || return 1
    if logged f "already removed"; then
        diag "expected: no warning that someone else removed it" && return 1
    fi
}

test_fifos_are_private_whatever_the_umask_and_unmakeable_ones_are_one_line() {
    local saved
    next_key
    saved=$(umask)
    umask 0277
    SHMM_FIFO_DIR=$work/masked start_reader a
    umask "$saved"
    must "the directory made with mode 700 under umask 0277" \
        [ "$(stat -c %a "$work/masked")" == 700 ] || return 1
    must "the FIFOs with mode 600" [ "$(stat -c %a "$work/masked/$key.notify")" == 600 ] ||
        return 1
    SHMM_FIFO_DIR=$work/masked message_gets_through a "under umask 0277" || return 1
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    # As nobody: a FIFO directory of its own that it may not write, and the
    # tutorial's protocol in a directory (/) that it may not write.
    next_key
    chmod o+x "$work"
    mkdir -m 0500 "$work/readonly" && chown nobody "$work/readonly"
    nobody_fifo_dir=$work/readonly as_nobody "$PYTHON_NOBODY" "$here/processa.py" --path "$work" \
        --proj-id "$proj" </dev/null >/dev/null 2>"$work/n.err"
    must "exit 1 for a FIFO directory nobody cannot write, not $?" [ $? == 1 ] || return 1
    must "one error line naming the call" one_error n \
        "mkfifo(pathname='$work/readonly/$key.notify', mode=0600): EACCES (Permission denied): uid $(id -u nobody) cannot make FIFOs in $work/readonly" ||
        return 1
    must "no segment" no_segment || return 1
    as_nobody "$PYTHON_NOBODY" "$here/processa.py" --seed-protocol --path "$work" --proj-id "$proj" \
        </dev/null >/dev/null 2>"$work/n.err"
    must "exit 1 for ./myfifo in a directory nobody cannot write, not $?" [ $? == 1 ] || return 1
    must "one error line with advice" one_error n \
        "mkfifo(pathname='myfifo', mode=0664): EACCES (Permission denied): processa --seed-protocol makes ./myfifo in the current directory" ||
        return 1
    must "no segment" no_segment
}

# proc_ctime SHMID: the segment's creation time, from /proc/sysvipc/shm.
proc_ctime() { awk -v id="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "ctime") c = i }
    NR > 1 && $2 == id { print $c }' /proc/sysvipc/shm; }
older_than() { (($(date +%s) - $(proc_ctime "$1") > $2)); }

test_a_blank_segment_another_program_holds_is_named_not_waited_for() {
    next_key
    open_input holder
    start_command holder env PYTHONPATH="$here" "$PYTHON" -c 'import shmm, sys
print(shmm.Segment.create(int(sys.argv[1], 0), 4096, 0o600).shmid, flush=True)
sys.stdin.read()  # alive, attached nowhere' "$key" <"$work/holder.in"
    must "the holder to make its segment" wait_for [ -s "$work/holder.out" ] || return 1
    local blank
    blank=$(cat "$work/holder.out") && shmids+=("$blank")
    start a processa.py
    finish a 3 || return 1
    must "while new: a processa starting, try again" one_error a "has just created" || return 1
    must "the segment to be older than a processa takes to set up" wait_for older_than "$blank" 5 ||
        return 1
    start a processa.py
    finish a 3 || return 1
    must "then: who holds it, and another key" one_error a \
        "all zero, made" || return 1
    must "naming pid and command" one_error a "by pid ${pid[holder]} ($(cut -c1-15 "/proc/${pid[holder]}/comm"))" ||
        return 1
    must "and the way out" one_error a "pick another key with --proj-id" || return 1
    must "the segment untouched" segment_exists "$blank" || return 1
    exec {input}>&-
    finish holder 0 && ipcrm -m "$blank"
}

test_processb_s_clean_advice_works_for_a_relative_path_that_is_not_utf_8() {
    local odd advice
    next_key
    odd=$work/$'odd\xff dir'
    mkdir "$odd"
    key=$(shmm key --path "$odd" --proj-id "$proj" -q) && keys+=("$key")
    start_command a env "$PYTHON" "$here/processa.py" --path "$odd" --proj-id "$proj"
    must "processa to listen" wait_for logged a "waiting for processb" || return 1
    kill -KILL "${pid[a]}"
    finish a 137 || return 1
    # Given relative to its directory, the path must come back absolute.
    (cd "$work" && "$PYTHON" "$here/processb.py" --path "${odd##*/}" --proj-id "$proj" --wait 0 \
        </dev/null 2>"$work/b.err")
    must "exit 5" [ $? == 5 ] || return 1
    must "the byte shown as \\xff, as ls -b does, not as a surrogate" \
        grep -qF 'odd\xff dir' "$work/b.err" || return 1
    must "no surrogate shown" no_line_with '\udc' "$work/b.err" || return 1
    # shellcheck disable=SC2016 # the backquotes are processb's, not a command
    advice=$(sed -n 's/.*if processa crashed, `\([^`]*\)` removes what it left.*/\1/p' "$work/b.err")
    must "processb to name the command" [ -n "$advice" ] || return 1
    (cd / && eval "$advice") 2>"$work/clean.err"
    must "the advice, followed, to succeed ($advice)" [ $? == 0 ] || return 1
    must "no segment, no FIFOs" no_segment && no_fifos
}

test_shmm_ls_into_a_closed_pipe_ends_quietly_as_ipcs_does() {
    py 'import os, subprocess, sys
reading, writing = os.pipe()
os.close(reading)  # nobody will read: the first write fails
ls = subprocess.run([sys.executable, f"{sys.argv[1]}/shmm.py", "ls"], stdout=writing,
                    stderr=subprocess.PIPE)
sys.exit(0 if ls.returncode == -13 and not ls.stderr else print(ls.returncode, ls.stderr) or 1)' \
        "$here"
    must "shmm.py ls into a closed pipe: killed by SIGPIPE, nothing on stderr" [ $? == 0 ]
}

test_a_proj_id_with_a_leading_0_is_octal_as_in_c() {
    next_key
    must "--proj-id 071 to be 57 (0x39), as strtol reads it" \
        [ "$(shmm key --path "$work" --proj-id 071 -q)" == "$(key_for 57)" ]
}

# --- The lessons and the experiment commands ------------------------------------

# lessons_left_nothing OUTPUT: the last line of lessons.sh in OUTPUT names the
# keys it used and its directory: no segment at any of those keys, the
# directory gone, and no process left working in it.
lessons_left_nothing() {
    local used dir k proc
    used=$(sed -n 's/^lessons.sh: keys used: \(.*\); .* removed$/\1/p' "$1")
    dir=$(sed -n 's/^lessons.sh: keys used: .*; \(.*\) removed$/\1/p' "$1")
    must "lessons.sh to name its keys and its directory last" [ -n "$used" -a -n "$dir" ] ||
        return 1
    for k in $used; do
        [[ $k == none ]] || must "no segment left at $k" [ -z "$(shmid_of "$k")" ] || return 1
    done
    must "$dir removed" [ ! -e "$dir" ] || return 1
    for proc in /proc/[0-9]*; do
        [[ $(readlink "$proc/cwd" 2>/dev/null) == "$dir"* ]] || continue
        diag "expected: no process left in $dir, not ${proc#/proc/}: $(tr '\0' ' ' <"$proc/cmdline")"
        return 1
    done
}

# lesson_said N PATTERN: lesson N of $work/lessons.out printed a line that
# matches PATTERN (grep -E).
lesson_said() {
    lesson_lines "$1" | grep -q -E -- "$2" && return 0
    diag "expected: lesson $1 to print a line like '$2'"
    return 1
}
lesson_lines() { awk -v n="$1:" '/^== Lesson / { on = ($3 == n) } on' "$work/lessons.out"; }

# the_lessons_said: what the kernel said in each lesson, as the lessons show it.
the_lessons_said() {
    local page ipcs='^0x[0-9a-f]{8} +[0-9]+ +[^ ]+ +'
    page=$(getconf PAGESIZE)
    lesson_said 1 "^  ok: the key, as the formula gives it: 0x46" &&
        lesson_said 1 "as a key_t, a signed int: -[0-9]+; negative" &&
        lesson_said 2 "EEXIST \(File exists\): key 0x21[0-9a-f]{6} has shmid [0-9]+ already" &&
        lesson_said 3 "^ipcrm: failed to parse argument: '0x31[0-9a-f]{6}'$" &&
        lesson_said 4 "${ipcs}0 +4096 +0 " && lesson_said 4 "${ipcs}666 +4096 +0 " &&
        lesson_said 4 "EACCES \(Permission denied\)|a normal user's view is skipped" &&
        lesson_said 4 "^mode in decimal: 438 " &&
        lesson_said 5 "${ipcs}600 +$((page + 1)) " &&
        lesson_said 5 "^mapped: $((2 * page)) bytes = 2 pages of $page " || return 1
    must "lesson 6: nattch 0 1 2 1 0 in ipcs -m" [ "$(lesson_lines 6 | awk '/^0x/ { print $6 }' |
        paste -s -d ' ')" == "0 1 2 1 0" ] || return 1
    must "lesson 7: the bytes, read by another process" lesson_said 7 "^hello, 共享内存$" || return 1
    must "lesson 8: the second line twice, the first never, read" [ "$(lesson_lines 8 |
        grep -x -E '(first|second) line' | paste -s -d ' ')" == "second line second line" ] ||
        return 1
    lesson_said 9 "^0x00000000 +[0-9]+ +[^ ]+ +600 +4096 +1 +dest" &&
        lesson_said 9 "^ +1 after IPC_RMID$" && lesson_said 9 "^  ok: a new shmid" || return 1
    must "lesson 10: the tutorial's FIFO printed the last line three times, ours every line" \
        [ "$(lesson_lines 10 | sed -n 's/^Message received: //p' | paste -s -d ' ')" == \
        "three three three one two three" ] || return 1
    if [[ -z $(why_no_tutorial_programs) ]]; then
        lesson_said 11 "^Message received: three$" &&
            lesson_said 11 "^  ok: every line a.cc printed is the last one" || return 1
    else
        lesson_said 11 "^# Skipped: " || return 1
    fi
    must "the lessons to end agreeing with the kernel" grep -q -x -E \
        "Every lesson (that ran )?agreed with the kernel.*" "$work/lessons.out"
}

# lessons_beside_a_processa_at_the_default_key: start a processa at the
# default key (no --path, no --proj-id), unless a segment is there already;
# run make lessons; check what they said, what they left, and that processa
# still listens and gets a message.
lessons_beside_a_processa_at_the_default_key() {
    local default_key status
    default_key=$(shmm key -q)
    if [[ -n $(shmid_of "$default_key") ]]; then
        diag "not checked: the lessons beside a processa at the default key $default_key, which has a segment already"
    else
        start_command default env --default-signal=INT "$PYTHON" "$here/processa.py"
        must "processa at the default key to listen" wait_for logged default "waiting for processb" ||
            return 1
        shmids+=("$(shmid_of "$default_key")")
    fi
    make -C "$here" lessons PYTHON="$PYTHON" </dev/null >"$work/lessons.out" 2>&1
    status=$?
    if [[ $status != 0 ]]; then
        diag "expected: make lessons to exit 0, not $status; its last lines:"
        tail -n 15 "$work/lessons.out" | sed 's/^/#   /'
        return 1
    fi
    the_lessons_said && lessons_left_nothing "$work/lessons.out" || return 1
    [[ -n ${pid[default]:-} ]] || return 0
    must "processa at the default key to listen still" running default || return 1
    echo "after the lessons" >"$work/sender.in"
    start_command sender "$PYTHON" "$here/processb.py" <"$work/sender.in"
    finish sender 0 && finish default 0 || return 1
    must "the message to arrive" grep -q -x "Message received: after the lessons" "$work/default.out"
}

test_make_lessons_shows_what_the_kernel_says_leaves_nothing_and_spares_processa() {
    global_lock || return 1 # parallel runs of the suite share the default key
    lessons_beside_a_processa_at_the_default_key
}

test_ctrl_c_in_the_middle_of_a_lesson_leaves_nothing_behind() {
    local case lesson marker
    for case in "6:<hold2 &" "9:every.txt &" "10:kill -STOP" "11:./b <in11"; do
        lesson=${case%%:*} marker=${case#*:}
        [[ $lesson == 11 && -n $(why_no_tutorial_programs) ]] && continue
        # In a process group of its own, as a terminal has it: Ctrl-C
        # sends SIGINT to the whole foreground group.
        start_command lessons setsid env --default-signal=INT PYTHON="$PYTHON" \
            SEED_TEXT="$seed_text" "$here/lessons.sh" "$lesson" </dev/null
        must "lesson $lesson to reach '$marker'" wait_for grep -q -F -- "$marker" \
            "$work/lessons.out" || return 1
        kill -INT -- -"${pid[lessons]}"
        finish lessons 130 || return 1
        lessons_left_nothing "$work/lessons.out" || return 1
    done
}

test_where_segments_die_with_their_process_the_lessons_that_need_them_are_skipped() {
    skip_reason=$(why_no_private_ipc)
    [[ -z $skip_reason ]] || return 0
    # shellcheck disable=SC2016 # expanded by that bash, from its arguments
    in_private_ipc bash -c 'echo 1 >/proc/sys/kernel/shm_rmid_forced && "$0" 3 && "$0" 10' \
        "$here/lessons.sh" </dev/null >"$work/lessons.out" 2>&1
    must "lessons 3 and 10 to exit 0, not $?" [ $? == 0 ] || return 1
    must "one line saying why" grep -q "shm_rmid_forced is 1: a segment dies with its last process" \
        "$work/lessons.out" || return 1
    must "lesson 3 skipped" lesson_said 3 "^# Skipped: shm_rmid_forced is 1" || return 1
    must "lesson 10 run" grep -q -x "Lesson 10 agreed with the kernel." "$work/lessons.out"
}

# make_experiment [OPTIONS]: shmm.py create at this test's key; set id to
# its shmid, and record it for cleanup.
make_experiment() {
    id=$(shmm create --path "$work" --proj-id "$proj" "$@" 2>"$work/create.err") &&
        shmids+=("$id") && return 0
    diag "shmm.py create $* failed:" && sed 's/^/#   /' "$work/create.err"
    return 1
}

# new_segment [OPTIONS]: a segment of mode 0600 at a new key: next_key, then make_experiment.
new_segment() { next_key && make_experiment --mode 0600 "$@"; }

test_create_prints_its_shmid_and_a_second_create_is_eexist_with_advice_that_works() {
    next_key
    make_experiment || return 1
    must "stdout to hold the shmid alone, not '$id'" grep -q -x '[0-9][0-9]*' <<<"$id" || return 1
    must "the call logged" logged create \
        "shmget(key=$key, size=4096, shmflg=IPC_CREAT|IPC_EXCL) = shmid $id$" || return 1
    must "perms 0 (no mode, as the tutorial's), 4096 bytes" [ "$(ipcs_field "$key" 4)" == 0 -a \
        "$(ipcs_field "$key" 5)" == 4096 ] || return 1
    shmm create --path "$work" --proj-id "$proj" >"$work/again.out" 2>"$work/again.err"
    must "exit status 3 for the second create, not $?" [ $? == 3 ] || return 1
    must "one error line: EEXIST, naming the shmid" one_error again \
        "EEXIST (File exists): key $key has shmid $id already" || return 1
    must "nothing on stdout" [ ! -s "$work/again.out" ] || return 1
    local advice
    # shellcheck disable=SC2016 # the backquotes are the message's
    advice=$(sed -n 's/.*remove it with `\([^`]*\)`.*/\1/p' "$work/again.err")
    (cd / && eval "$advice") 2>"$work/advice.err"
    must "the advice, '$advice', followed from /, to remove it" segment_gone "$id" || return 1
    make_experiment --mode 0640 --size 5000 || return 1
    must "then create to work again, as asked: perms 640, 5000 bytes" \
        [ "$(ipcs_field "$key" 4)" == 640 -a "$(ipcs_field "$key" 5)" == 5000 ] || return 1
    ipcrm -m "$id"
}

test_create_refuses_size_0_and_sizes_beyond_the_kernel_limits_but_not_the_layout_s() {
    next_key
    local bad
    for bad in 0 -1 abc 18446744073709551616; do
        shmm create --path "$work" --proj-id "$proj" --size "$bad" >"$work/s.out" 2>"$work/s.err"
        must "--size $bad: exit status 2, not $?" [ $? == 2 ] || return 1
        must "--size $bad: one error line" one_error s "argument --size: $bad" || return 1
    done
    must "the size 2**64 said to be beyond the limit" one_error s "beyond this system's limit" ||
        return 1
    shmm create --path "$work" --proj-id "$proj" --size 0 2>"$work/s.err"
    must "the size 0 said to be too small" one_error s "a segment needs at least one byte" ||
        return 1
    must "no segment made" no_segment || return 1
    # 4 GiB and more: too big for processa's message layout, not for create.
    py 'import argparse, shmm
big = (4 << 30) + 128
if big <= shmm.read_kernel_limit("shmmax"):
    assert shmm.segment_size_argument(str(big)) == big
try:
    shmm.size_argument(str(big))
except argparse.ArgumentTypeError as err:
    assert "message layout" in str(err), err
else:
    raise AssertionError("processa took 4 GiB + 128 bytes")' 2>"$work/py.err"
    must "create to take 4 GiB + 128 bytes where processa does not" [ $? == 0 ] ||
        { sed 's/^/#   /' "$work/py.err"; return 1; }
}

test_attach_maps_whole_pages_holds_until_a_line_for_or_a_signal_and_shows_nattch() {
    local page
    page=$(getconf PAGESIZE)
    new_segment --size $((page + 1)) || return 1
    shmm attach "$id" --for 0 </dev/null >"$work/at.out" 2>"$work/at.err"
    must "attach --for 0: exit status 0, not $?" [ $? == 0 ] || return 1
    must "$((page + 1)) bytes mapped as 2 pages" grep -q -x -F "mapped: $((2 * page)) bytes = 2 pages of $page (/proc/self/maps), for a segment of $((page + 1)) bytes" \
        "$work/at.out" || return 1
    must "nattch 1 while attached" grep -q -x "nattch 1 (IPC_STAT)" "$work/at.out" || return 1
    must "nattch 0 after shmdt, while the process still runs" grep -q -x \
        "shmdt: detached; nattch 0, while this process (pid [0-9]*) still runs" "$work/at.out" ||
        return 1
    # End of input does not end the hold; a signal does, after shmdt.
    start_command holder env --default-signal=INT "$PYTHON" "$here/shmm.py" attach "$id" \
        --for 600 </dev/null
    must "the holder to hold on at the end of its input" wait_for logged holder \
        "end of input: holding on" || return 1
    must "nattch 1" nattch_is 1 || return 1
    kill -INT "${pid[holder]}"
    finish holder 130 || return 1
    must "the holder to detach, then say nattch 0" grep -q "^shmdt: detached; nattch 0" \
        "$work/holder.out" || return 1
    must "nattch 0" nattch_is 0 || return 1
    # A line on stdin ends it; kill -9 detaches too, by the kernel.
    open_input holder
    start_command holder "$PYTHON" "$here/shmm.py" attach "$id" <"$work/holder.in"
    must "nattch 1" wait_for nattch_is 1 || return 1
    echo >&"$input"
    finish holder 0 || return 1
    start_command holder "$PYTHON" "$here/shmm.py" attach "$id" --for 0.1 </dev/null
    finish holder 0 || return 1
    start_command holder "$PYTHON" "$here/shmm.py" attach "$id" </dev/null
    must "nattch 1" wait_for nattch_is 1 || return 1
    kill -KILL "${pid[holder]}"
    finish holder 137 || return 1
    must "nattch 0 after kill -9, the segment still there" nattch_is 0 || return 1
    ipcrm -m "$id"
}

test_write_and_read_carry_any_bytes_and_too_long_a_text_is_refused_naming_both_sizes() {
    new_segment || return 1
    local text longest
    # shellcheck disable=SC2016 # a $ that nothing expands, among the bytes
    text=$(printf 'caf\xe9 你好 \\ $HOME %%s')
    shmm write "$id" "$text" 2>"$work/w.err"
    must "write: exit status 0, not $?" [ $? == 0 ] || return 1
    must "read in another process to print the same bytes" cmp <(printf '%s\n' "$text") \
        <(shmm read "$id") || return 1
    longest=$(head -c 4095 /dev/zero | tr '\0' x)
    must "a text of 4095 bytes, and its NUL, to fit" shmm write "$id" "$longest" 2>/dev/null ||
        return 1
    shmm write "$id" "${longest}y" 2>"$work/w.err"
    must "4096 bytes: exit status 2, not $?" [ $? == 2 ] || return 1
    must "one error line naming both sizes" one_error w \
        "TEXT has 4096 bytes, 4097 with its terminating NUL: more than the 4096 bytes of shmid $id" ||
        return 1
    shmm write "$id" "$(head -c 100000 /dev/zero | tr '\0' z)" 2>"$work/w.err"
    must "100000 bytes: exit status 2, not $?" [ $? == 2 ] || return 1
    must "the segment untouched" [ "$(shmm read "$id")" == "$longest" ] || return 1
    shmm read "$id" >/dev/full 2>"$work/r.err"
    must "read into a full disk: exit status 1, not $?" [ $? == 1 ] || return 1
    must "read into a full disk: one line" one_error r "writing to stdout: ENOSPC" || return 1
    ipcrm -m "$id"
}

test_read_every_stays_attached_and_prints_each_write_until_a_signal() {
    new_segment || return 1
    start_command every "$PYTHON" "$here/shmm.py" read "$id" --every 0.05
    must "nattch 1 while it reads" wait_for nattch_is 1 || return 1
    shmm write "$id" "one" 2>/dev/null && must "one printed" wait_for grep -q -x one \
        "$work/every.out" || return 1
    shmm write "$id" "two" 2>/dev/null && must "two printed" wait_for grep -q -x two \
        "$work/every.out" || return 1
    kill -TERM "${pid[every]}"
    finish every 143 || return 1
    must "nattch 0 once it died" nattch_is 0 || return 1
    ipcrm -m "$id"
}

test_experiment_commands_refuse_a_removed_shmid_bad_arguments_and_closed_stdout() {
    new_segment || return 1
    ipcrm -m "$id"
    local command status
    for command in "attach $id --for 0" "write $id x" "read $id" "chmod $id 0600"; do
        # shellcheck disable=SC2086 # each command is several words
        shmm $command </dev/null >"$work/e.out" 2>"$work/e.err"
        status=$?
        must "$command: exit status 1, not $status" [ $status == 1 ] || return 1
        must "$command: one error line" one_error e \
            "no segment has shmid $id (it was never made, or it was removed)" || return 1
    done
    for command in "attach abc" "attach 2147483648" "attach 1 --for inf" "read 1 --every nan" \
        "read 1 --every -1" "write 1" "chmod 1 999" "chmod 1" "create --mode 01777" \
        "create --proj-id 0x100"; do
        # shellcheck disable=SC2086 # each command is several words
        shmm $command </dev/null >"$work/e.out" 2>"$work/e.err"
        status=$?
        must "$command: exit status 2, not $status" [ $status == 2 ] || return 1
        must "$command: one error line" one_error e "" || return 1
    done
    shmm create --path "$work" --proj-id "$proj" >&- 2>"$work/e.err"
    must "create with stdout closed: exit status 1, not $?" [ $? == 1 ] || return 1
    must "create with stdout closed: one error line" one_error e "stdout is closed" || return 1
    shmm create --path "$work" --proj-id "$proj" >/dev/full 2>"$work/e.err"
    must "create into a full disk: exit status 1, not $?" [ $? == 1 ] || return 1
    must "create into a full disk: one error line" one_error e "writing to stdout: ENOSPC" ||
        return 1
    must "no segment left: nobody would know its shmid" no_segment
}

# shmm_as_nobody ARGS...: run shmm.py as the user nobody, with this test's outputs.
shmm_as_nobody() { as_nobody "$PYTHON_NOBODY" "$here/shmm.py" "$@" >"$work/n.out" 2>"$work/n.err"; }

test_a_mode_0_segment_is_eacces_even_to_its_owner_and_the_advised_chmod_opens_it() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    next_key
    shmm_as_nobody create --path "$work" --proj-id "$proj"
    id=$(cat "$work/n.out") && shmids+=("$id")
    must "nobody's segment, perms 0" [ "$(ipcs_field "$key" 3)" == nobody -a \
        "$(ipcs_field "$key" 4)" == 0 ] || return 1
    local advice command
    for command in "read $id" "write $id x"; do
        # shellcheck disable=SC2086 # each command is several words
        shmm_as_nobody $command
        must "$command as nobody: exit status 4, not $?" [ $? == 4 ] || return 1
        must "$command as nobody: one error line, EACCES and the mode" one_error n \
            "EACCES (Permission denied): shmid $id has mode 0, which does not let even its owner" ||
            return 1
    done
    # shellcheck disable=SC2016 # the backquotes are the message's
    advice=$(sed -n 's/.*you can open it with `python3 \([^`]*\)`.*/\1/p' "$work/n.err")
    # shellcheck disable=SC2086 # the advice is several words
    as_nobody "$PYTHON_NOBODY" $advice >"$work/advice.out" 2>&1
    must "the advice, '$advice', followed by nobody, to work" grep -q -x \
        "shmid $id: mode 0 -> 0600" "$work/advice.out" || return 1
    must "perms 600, still nobody's" [ "$(ipcs_field "$key" 4)" == 600 -a \
        "$(ipcs_field "$key" 3)" == nobody ] || return 1
    shmm_as_nobody write "$id" "by nobody" && shmm_as_nobody read "$id"
    must "then nobody to write and read it" grep -q -x "by nobody" "$work/n.out" || return 1
    shmm chmod "$id" 0640 >/dev/null
    must "root's chmod to keep nobody its owner" [ "$(ipcs_field "$key" 4)" == 640 -a \
        "$(ipcs_field "$key" 3)" == nobody ] || return 1
    ipcrm -m "$id"
}

test_another_user_s_segment_is_refused_to_read_write_chmod_and_create_with_advice_that_works() {
    skip_reason=$(why_not_nobody)
    [[ -z $skip_reason ]] || return 0
    new_segment || return 1
    local me nobody_uid advice
    me="$(id -un) (uid $(id -u))" nobody_uid=$(id -u nobody)
    shmm_as_nobody read "$id"
    must "read as nobody: exit status 4, not $?" [ $? == 4 ] || return 1
    must "one error line naming the owner and the chmod" one_error n \
        "shmid $id belongs to $me, and its mode 0600 does not let uid $nobody_uid read it; only its owner (or root) can open it to you, with \`python3 $here/shmm.py chmod $id 0604\`" ||
        return 1
    # shellcheck disable=SC2016 # the backquotes are the message's
    advice=$(sed -n 's/.*can open it to you, with `\([^`]*\)`.*/\1/p' "$work/n.err")
    shmm_as_nobody write "$id" x
    must "write as nobody: exit status 4, not $?" [ $? == 4 ] || return 1
    must "one error line: read and write" one_error n "does not let uid $nobody_uid read and write it" ||
        return 1
    shmm_as_nobody chmod "$id" 0666
    must "chmod as nobody: exit status 4, not $?" [ $? == 4 ] || return 1
    must "one error line: EPERM, only the owner" one_error n \
        "EPERM (Operation not permitted): only the owner of shmid $id, $me, or root may change its mode" ||
        return 1
    shmm_as_nobody create --path "$work" --proj-id "$proj"
    must "create as nobody: exit status 3, not $?" [ $? == 3 ] || return 1
    must "one error line: EEXIST, whose it is" one_error n \
        "has shmid $id already (a segment outlives the process that made it), which belongs to $me: only they can remove it" ||
        return 1
    (cd / && eval "$advice") >/dev/null 2>&1
    must "the advice, '$advice', followed by the owner: nobody may read it" shmm_as_nobody read "$id" ||
        return 1
    ipcrm -m "$id"
}

test_write_refuses_a_live_processa_s_segment_and_processa_goes_on() {
    next_key
    start_reader a || return 1
    shmm write "$(shmid_of "$key")" "over the header" 2>"$work/w.err"
    must "exit status 3, not $?" [ $? == 3 ] || return 1
    must "one error line" one_error w \
        "starts with processa's header (shmm.py3): a C string would overwrite it; write into a segment of your own" ||
        return 1
    message_gets_through a "after the refused write"
}

test_key_v_shows_a_key_with_the_top_bit_set_as_the_negative_key_t_of_the_tutorial() {
    local top
    top=$(key_for 0x94)
    must "key 0x6194 to be $top" [ "$(shmm key -v --path "$work" --proj-id 0x6194 2>"$work/k.err")" \
        == "$top" ] || return 1
    must "its key_t, negative, and the tutorial's message" grep -q -F \
        "as a key_t, a signed int: $((top - 0x100000000)); negative, and valid all the same: only -1 means failure. The tutorial tested \`n < 0\`, took this key for a failure and printed errno, which nobody had set: \"filed ftok:Success\"" \
        "$work/k.err" || return 1
    shmm key -v --path "$work" --proj-id 0x46 >/dev/null 2>"$work/k.err"
    must "key 0x46's key_t, positive" grep -q -E \
        "::as a key_t, a signed int: $(($(key_for 0x46)))$" "$work/k.err"
}

# --- The benchmark, as a smoke test (timings are never asserted) -------------------

test_bench_quick_checks_every_case_and_reports_json() {
    "$PYTHON" "$here/bench_shm.py" --quick --json >"$work/bench.json" 2>"$work/bench.err"
    must "bench_shm.py --quick to succeed" [ $? == 0 ] ||
        { tail -n 5 "$work/bench.err" | sed 's/^/#   /'; return 1; }
    py 'import json, sys
results = json.load(open(sys.argv[1]))
cases = {(c["transport"], c["block"], c["slots"]): c for c in results["cases"]}
for block in (64, 4096, 65536, 1048576):
    for transport, slots in (("pipe", 1), ("mp_pipe", 1), ("shm", 1), ("shm", 16),
                             ("shm_defaults", 1), ("posix_shm", 1), ("posix_shm_sem", 1)):
        case = cases[transport, block, slots]
        assert case["gbps"] > 0 and case["msgs_per_s"] > 0, case
        assert case["ratio_to_pipe"] > 0 and case["ratio_to_mp_pipe"] > 0, case
        assert (case["slot_size"] > 0) == transport.startswith("shm"), case
assert set(results["latency_us"]) == {"shm", "pipe", "pipe_polling"}
assert all(us > 0 for us in results["latency_us"].values())
commands = {c["name"]: c for c in results["end_to_end"]}
ours = [c for c in commands.values() if c["name"].startswith("processb")]
assert {c["stream"] for c in ours} == {"lines", "raw"}, ours
assert {"python relay", "sed | cat", "cat | cat"} <= set(commands), list(commands)
for command in commands.values():
    assert command["seconds"] > 0 and command["amount"] > 0, command
for command in ours:
    assert command["speedup"] and all(x > 0 for x in command["speedup"].values()), command
for key in ("peak_rss_kib", "peak_rss_lines_kib"):
    assert set(results[key]) == {"reader", "writer"}, results[key]
    assert all(kib > 0 for kib in results[key].values()), results[key]
assert set(results["load"]) == {"start", "end"} and results["repeats"] >= 1
assert results["stream_bytes"] > 0
assert results["machine"]["cpus"] >= 1' "$work/bench.json" 2>"$work/bench.check"
    must "the JSON to hold every case and every figure" [ $? == 0 ] ||
        { sed 's/^/#   /' "$work/bench.check"; return 1; }
}

# --- Last: the run leaves nothing behind -------------------------------------------

test_nothing_left_behind() {
    local k id dir name left=0
    for k in "${keys[@]}"; do
        id=$(shmid_of "$k")
        [[ -n $id ]] && diag "segment $id left at key $k" && left=1
        for dir in "$fifo_dir" "${made_dirs[@]}"; do
            [[ -e $dir/$k.notify || -e $dir/$k.ack ]] && diag "FIFO left in $dir for $k" && left=1
        done
    done
    for id in "${shmids[@]}"; do
        [[ -n $id ]] && segment_exists "$id" && diag "segment $id left (key 0)" && left=1
    done
    for name in "${!pid[@]}"; do
        running "$name" && diag "$name (pid ${pid[$name]}) still running" && left=1
    done
    # Every program of this run had --path $work on its command line.
    pgrep -f -- "--path $work" >/dev/null && diag "processes of this run still running:" &&
        pgrep -a -f -- "--path $work" | sed 's/^/#   /' && left=1
    return $left
}

# --- Run ------------------------------------------------------------------------

only=${1:-}
mapfile -t tests < <(sed -n 's/^\(test_[a-z0-9_]*\)() {$/\1/p' "$0")
for test in "${tests[@]}"; do
    run_test "$test"
done
((skipped == 0)) || diag "$skipped skipped: see their ok lines for why"
echo "$passed passed, $failed failed"
((failed == 0))
