#!/usr/bin/env bash
# lessons.sh - the tutorial's experiments, run again, each checked against the kernel.
#
# The tutorial tells its story through experiments: a second run that fails
# with EEXIST, perms 0, nattch going up and down, a reader that repeats and
# misses lines. Each lesson below runs one of them, in the tutorial's order:
# one line says what the tutorial showed; then each command is printed as a
# learner would type it ($ ...), run, and its real output shown; then the
# script checks that the kernel agrees (ipcs -m, /proc/sysvipc/shm,
# /proc/PID/maps), and says so in a line `ok: ...`. At the first
# disagreement it stops, naming the lesson and what differed.
#
# Usage: ./lessons.sh [N]       every lesson, or lesson N alone (make lessons ARGS=N)
#        ./lessons.sh --build-tutorial DIR PATHNAME
#                               only build the tutorial's a and b in DIR, with
#                               PATHNAME as their ftok path (test_shm.sh uses it)
# At a terminal it waits for Enter between lessons; otherwise it runs through.
# Exit status: 0 when the kernel agreed with every lesson; 1 at the first
# disagreement; 2 for a bad command line; 128+N after signal N.
#
# Isolation: the lessons work in a fresh directory (mktemp -d), which is the
# ftok path of every command (--path .) and holds processa's FIFOs
# (SHMM_FIFO_DIR), so a processa that runs at the default key is never
# touched. On every way out, Ctrl-C included, the script ends what it
# started, removes by shmid the segments it made, and removes its
# directory; its last line lists the keys it used.
# Waiting: on events (a line of output, nattch, a process ending), polled up
# to a deadline; never a sleep to synchronise.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
here_q=$(printf %q "$here")  # as it appears in the commands, which eval reads
PYTHON=${PYTHON:-python3}
# The interpreter run as the user nobody (lesson 4, as root): one that nobody
# can read, which one in a home directory may not be.
PYTHON_NOBODY=${PYTHON_NOBODY:-/usr/bin/python3}
seed_text=${SEED_TEXT:-$here/../shared/seed/000_2519dfad12f01e0d.txt}
deadline=30      # seconds any awaited event may take on a busy machine
lessons=11
outliving="2 3 4 5 6 7 8 9"  # the lessons whose segments outlive the command that made them

# What the commands shown below stand for.
shmm.py() { "$PYTHON" "$here/shmm.py" "$@"; }
processa.py() { "$PYTHON" "$here/processa.py" "$@"; }
processb.py() { "$PYTHON" "$here/processb.py" "$@"; }

# --- The tutorial's own programs -------------------------------------------------
#
# Its last listing holds shmm.hpp, comm.h, a.cc and b.cc, each after a line
# `// NAME`. They are taken from its text as they are, with one change: the
# ftok path, /home/wind in the tutorial, becomes PATHNAME.

# extract_tutorial DIR PATHNAME: write the tutorial's last C++ listing into DIR.
extract_tutorial() {
    mkdir -p "$1" || return 1
    # shellcheck disable=SC2016 # the backquotes are Markdown's, in Python
    "$PYTHON" -c 'import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
listing = re.findall(r"```cpp\n(.*?)```", text, re.S)[-1]
parts = re.split(r"^// (\S+\.(?:hpp|h|cc))\n", listing, flags=re.M)
for name, body in zip(parts[1::2], parts[2::2]):
    with open(f"{sys.argv[2]}/{name}", "w") as source:
        source.write(body.replace("\"/home/wind\"", f"\"{sys.argv[3]}\""))' \
        "$seed_text" "$1" "$2" || return 1
    if ! grep -q -F "#define PATHNAME \"$2\"" "$1/shmm.hpp"; then
        echo "lessons.sh: the tutorial's shmm.hpp has no PATHNAME \"/home/wind\" to change" >&2
        return 1
    fi
}

# why_no_tutorial: print why the tutorial's programs cannot be built here, if so.
why_no_tutorial() {
    if ! command -v g++ >/dev/null; then
        echo "no C++ compiler (g++)"
    elif [[ ! -r $seed_text ]]; then
        echo "the tutorial's text is not at ../shared/seed/ beside the checkout (set SEED_TEXT to its path)"
    fi
}

if [[ ${1:-} == --build-tutorial ]]; then
    if [[ $# != 3 ]]; then
        echo "usage: $0 --build-tutorial DIR PATHNAME" >&2
        exit 2
    fi
    why=$(why_no_tutorial)
    [[ -z $why ]] || { echo "lessons.sh: cannot build the tutorial's programs: $why" >&2; exit 1; }
    extract_tutorial "$2" "$3" && cd "$2" && g++ a.cc -o a && g++ b.cc -o b
    exit
fi
first=1 last=$lessons
if [[ $# == 1 && $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= lessons)); then
    first=$((10#$1)) last=$first
elif [[ $# != 0 ]]; then
    echo "usage: $0 [LESSON], a lesson from 1 to $lessons; or $0 --build-tutorial DIR PATHNAME" >&2
    exit 2
fi
titles=("" "the key: ftok(3)" "create, then create again: EEXIST"
    "the segment outlives its process; ipcrm -m SHMID, ipcrm -M KEY"
    "perms: 0 without a mode, 666 with 0666; IPC_STAT's mode; IPC_SET"
    "size: 4097 bytes take two pages" "nattch: 0, 1, 2, 1, 0 as processes attach and detach"
    "another process sees the bytes" "no synchronisation: lines lost and lines repeated"
    "IPC_RMID while attached; why shmids are large"
    "the tutorial's one FIFO loses lines; our counts do not" "the tutorial's own a.cc and b.cc")

# --- Saying, running, checking ----------------------------------------------------

dir=$(mktemp -d "${TMPDIR:-/tmp}/lessons.XXXXXX") || exit 1
dir_q=$(printf %q "$dir")
cd "$dir" || exit 1
chmod 0711 "$dir"                # lesson 4: the user nobody works here too
export SHMM_FIFO_DIR=$dir/fifos  # processa makes it, with mode 0700
logs=$dir/logs                   # what each command printed
mkdir "$logs" || exit 1
lesson=0 step=0 status=0 output=""
# A signal's trap runs inside the redirections of the command it interrupted:
# what cleanup says goes to the script's own stdout, kept here.
exec {stdout}>&1
keys=()              # every key a lesson used
skipped=()           # the lessons that could not run here
held=()              # the FIFOs this script holds open for its background processes
declare -A pids=()   # background processes by name
dies_with_us=""      # what makes a background process end with this script (start)
setpriv --pdeathsig TERM true 2>/dev/null && dies_with_us="setpriv --pdeathsig TERM"
declare -A shown=()  # lines of each one's output shown so far

tutorial() { printf '\nThe tutorial: %s\n' "$1"; }
say() { printf '# %s\n' "$@"; }

# shown_as TEXT: TEXT as a learner sees it, the checkout's path left out.
shown_as() { printf '%s\n' "${1//"$here_q/"/}" | sed "s|$here/||g"; }

# run COMMAND: print COMMAND as typed, run it, print what it printed. Sets
# status to its exit status and output to its output (stdout and stderr,
# in the order it wrote them).
run() {
    step=$((step + 1))
    shown_as "\$ $1"
    eval "$1" >"$logs/$step" 2>&1
    status=$?
    output=$(<"$logs/$step")
    [[ -z $output ]] || shown_as "$output"
}

# start NAME COMMAND: print COMMAND as typed, with a `&`, and run it in the
# background, as the process pids[NAME] (exec: no shell in between, so that
# signals reach it). What it prints goes to $logs/NAME (unless COMMAND says
# where), and show_new NAME shows it. It gets none of the FIFOs held here,
# or it would never see the end of its input. And it gets SIGTERM if this
# script dies, even by kill -9, which no trap catches: a holder, or the
# tutorial's b.cc at the end of its input, would otherwise run for ever.
start() {
    local closed=" $stdout>&-" fd
    shown_as "\$ $2 &"
    for fd in "${held[@]}"; do closed+=" $fd>&-"; done
    : >"$logs/$1" # now, so that no poll reads what an earlier NAME printed, or finds nothing
    eval "exec $dies_with_us $(spelled_out "$2")$closed" >"$logs/$1" 2>&1 &
    pids[$1]=$!
    shown[$1]=0
}

# spelled_out COMMAND: COMMAND with the shmm.py, processa.py or processb.py
# that starts it spelled out, as exec needs it.
spelled_out() {
    case $1 in
        shmm.py\ * | processa.py\ * | processb.py\ *) printf '%q %s/%s' "$PYTHON" "$here_q" "$1" ;;
        *) printf '%s' "$1" ;;
    esac
}

# show_new NAME: print what NAME printed since the last look.
show_new() {
    local lines
    lines=$(wc -l <"$logs/$1")
    ((lines > shown[$1])) &&
        shown_as "$(tail -n +"$((shown[$1] + 1))" "$logs/$1" | head -n $((lines - shown[$1])))"
    shown[$1]=$lines
}

# disagree WHAT: stop the lessons: the kernel did not do what the lesson says.
disagree() {
    local name
    printf 'lessons.sh: lesson %s: %s\n' "$lesson" "$1" >&2
    for name in "${!pids[@]}"; do
        printf '  what %s (pid %s) printed last:\n' "$name" "${pids[$name]}" >&2
        tail -n 5 "$logs/$name" | sed 's/^/    /' >&2
    done
    exit 1
}

# expect WHAT EXPECTED ACTUAL: go on if ACTUAL is EXPECTED; else stop, saying both.
expect() {
    [[ $3 == "$2" ]] || disagree "$1: expected ${2:-nothing}, but it is ${3:-nothing}"
    printf '  ok: %s: %s\n' "$1" "${2:-nothing}"
}

# expect_said WHAT TEXT: the last command run printed TEXT.
expect_said() {
    grep -q -F -- "$2" <<<"$output" || disagree "$1: the output does not say \"$2\""
    printf '  ok: %s\n' "$1"
}

# wait_until WHAT COMMAND...: poll COMMAND until it succeeds; stop if it never does.
wait_until() {
    local until=$((SECONDS + deadline))
    until "${@:2}"; do
        ((SECONDS < until)) || disagree "waited $deadline s for $1"
        sleep 0.05
    done
}

ended() {
    local state
    state=$(ps -o stat= -p "${pids[$1]}")
    [[ -z $state || $state == Z* ]]
}
running() { ! ended "$1"; }

# finish NAME: wait until NAME has ended; set status to its exit status.
finish() {
    wait_until "${1} to end" ended "$1"
    wait "${pids[$1]}"
    status=$?
    unset "pids[$1]"
}

printed() { grep -q -x -F -- "$2" "$1"; }
times_printed() { grep -c -x -F -- "$2" "$1"; }

# --- What the kernel says -----------------------------------------------------------

# ftok_key PROJ: ftok(3)'s key for . and PROJ: glibc's formula, from stat(1).
ftok_key() {
    local device inode
    read -r device inode < <(stat -c '%d %i' .)
    printf '0x%08x' $(((($1 & 0xff) << 24) | ((device & 0xff) << 16) | (inode & 0xffff)))
}

# /proc/sysvipc/shm: key (signed decimal) shmid perms size cpid lpid nattch uid ...
shmid_at() {
    awk -v k=$(($1 > 0x7fffffff ? $1 - 0x100000000 : $1)) 'NR > 1 && $1 == k { print $2 }' \
        /proc/sysvipc/shm
}
segment_exists() { awk -v id="$1" 'NR > 1 && $2 == id { found = 1 } END { exit !found }' /proc/sysvipc/shm; }
creator_of() { awk -v id="$1" 'NR > 1 && $2 == id { print $5 }' /proc/sysvipc/shm; }

# ipcs_column SHMID N: column N of SHMID's line in ipcs -m
# (1 key, 2 shmid, 3 owner, 4 perms, 5 bytes, 6 nattch, 7 status).
ipcs_column() { ipcs -m | awk -v id="$1" -v n="$2" '$2 == id { print $n }'; }
nattch_is() { [[ $(ipcs_column "$1" 6) == "$2" ]]; }

# show_ipcs SHMID: run ipcs -m, its header and SHMID's line.
show_ipcs() { run "ipcs -m | awk 'NR == 3 || \$2 == $1'"; }

# fresh_key: set proj to the next project id of this lesson (0xN1, 0xN2, ...
# for lesson N) whose key has no segment, and key to that key.
fresh_key() {
    while :; do
        next_proj=$((next_proj + 1))
        proj=$(printf '0x%x' "$next_proj")
        key=$(ftok_key "$proj")
        [[ -z $(shmid_at "$key") ]] && break
    done
    keys+=("$key")
}

# create_segment [OPTIONS]: run shmm.py create at a fresh key; set id to its shmid.
create_segment() { create_segment_as shmm.py "$@"; }

# create_segment_as SHMM [OPTIONS]: the same, with SHMM for shmm.py (nobody's, say).
create_segment_as() {
    fresh_key
    run "$1 create --path . --proj-id $proj${2:+ $2}"
    expect "create's exit status" 0 "$status"
    id=$(tail -n 1 <<<"$output")
    expect "a segment with shmid $id at key $key (/proc/sysvipc/shm)" "$id" "$(shmid_at "$key")"
}

# remove_segment: run shmm.py rm for shmid $id, and check that it is gone.
remove_segment() {
    run "shmm.py rm $id"
    segment_exists "$id" && disagree "shmid $id is still there after shmm.py rm"
    printf '  ok: shmid %s is gone (/proc/sysvipc/shm)\n' "$id"
}

# --- Cleaning up -------------------------------------------------------------------

# made_shmids: the shmids this run made: those create and processa reported,
# and the segments at its keys whose creators it started (a.cc).
made_shmids() {
    local key name
    cat "$logs"/* 2>/dev/null | sed -n 's/.*) = shmid \([0-9]*\)$/\1/p; s/.*shmget created shmid \([0-9]*\):.*/\1/p'
    for key in "${keys[@]}"; do
        for name in "${!pids[@]}"; do
            id=$(shmid_at "$key")
            [[ -n $id && $(creator_of "$id") == "${pids[$name]}" ]] && echo "$id"
        done
    done
}

cleanup() {
    local name id until=$((SECONDS + deadline))
    trap '' INT TERM HUP QUIT PIPE # a second Ctrl-C must not cut the cleanup short
    for name in "${!pids[@]}"; do kill -TERM "${pids[$name]}" 2>/dev/null; done
    for name in "${!pids[@]}"; do kill -CONT "${pids[$name]}" 2>/dev/null; done # a stopped one too
    for name in "${!pids[@]}"; do
        until ended "$name" || ((SECONDS >= until)); do sleep 0.05; done
        kill -KILL "${pids[$name]}" 2>/dev/null
    done
    for id in $(made_shmids | sort -u); do
        segment_exists "$id" && ipcrm -m "$id"
    done
    wait 2>/dev/null
    cd / && rm -rf "$dir"
    echo "lessons.sh: keys used: ${keys[*]:-none}; $dir removed" 2>/dev/null 1>&"$stdout"
}

# die_by SIGNAL: clean up (which ignores SIGNAL meanwhile), then die by
# SIGNAL, so that a script around us stops too.
die_by() {
    trap - EXIT
    cleanup
    trap - "$1"
    kill -"$1" $$
}
trap cleanup EXIT
trap 'die_by INT' INT
trap 'die_by TERM' TERM
trap 'die_by HUP' HUP
trap 'die_by QUIT' QUIT
trap 'die_by PIPE' PIPE # ./lessons.sh | head: whoever read our output has gone

# --- The lessons -------------------------------------------------------------------

lesson_1() {
    tutorial "ftok(\"/home/wind\", 0x1246) gave the key 0x46010004; with 0x6194, its first run said \"filed ftok:Success\""
    say "ftok(3) builds the key from the file's device and inode and 8 bits of the project id:"
    run "stat -c '%d %i' ."
    local device inode formula
    read -r device inode <<<"$output"
    formula=$(ftok_key 0x46)
    say "(0x46 << 24) | ($device & 0xff) << 16 | ($inode & 0xffff) = $formula"
    run "shmm.py key --path . --proj-id 0x1246"
    expect "the key, as the formula gives it" "$formula" "$(tail -n 1 <<<"$output")"
    say "The same file, named another way, with 0x46, the 8 bits of 0x1246 that ftok keeps:"
    run "shmm.py key --path $dir_q --proj-id 0x46"
    expect "the same key from the same file, and from 0x46 as from 0x1246" "$formula" \
        "$(tail -n 1 <<<"$output")"
    say "0x6194 keeps 0x94: the top bit of the key is set, and a key_t, a signed int, is negative:"
    run "shmm.py key -v --path . --proj-id 0x6194"
    expect "the key" "$(ftok_key 0x94)" "$(tail -n 1 <<<"$output")"
    expect_said "the key_t is negative: the tutorial's n < 0 took it for a failure" \
        "as a key_t, a signed int: -"
}

lesson_2() {
    tutorial "its second ./a failed: \"create share memory error:File exists\""
    create_segment
    say "Again, with the same path and project id, so the same key:"
    run "shmm.py create --path . --proj-id $proj"
    expect "the second create's exit status (3, SEGMENT_CONFLICT)" 3 "$status"
    expect_said "shmget says EEXIST (File exists)" "EEXIST (File exists)"
    expect_said "and names the shmid in the way" "has shmid $id already"
    remove_segment
}

lesson_3() {
    tutorial "ipcs -m listed the segment after ./a had ended; ipcrm -m 0x46010004 failed to parse, ipcrm -m 0 removed it"
    create_segment
    local creator
    creator=$(creator_of "$id")
    say "create (pid $creator) has ended; its segment has not:"
    show_ipcs "$id"
    expect "ipcs -m lists it, at its key" "$key" "$(ipcs_column "$id" 1)"
    kill -0 "$creator" 2>/dev/null && disagree "its creator, pid $creator, still runs"
    printf '  ok: its creator, pid %s, is gone\n' "$creator"
    say "ipcrm -m takes a shmid, not a key:"
    run "ipcrm -m $key"
    expect "ipcrm's exit status" 1 "$status"
    expect_said "ipcrm fails to parse a key as a shmid" "failed to parse argument: '$key'"
    run "ipcrm -m $id"
    expect "ipcrm's exit status" 0 "$status"
    expect "the segment at $key (/proc/sysvipc/shm)" "" "$(shmid_at "$key")"
    say "ipcrm -M takes the key:"
    run "shmm.py create --path . --proj-id $proj"
    id=$(tail -n 1 <<<"$output")
    run "ipcrm -M $key"
    expect "ipcrm -M's exit status" 0 "$status"
    expect "the segment at $key (/proc/sysvipc/shm)" "" "$(shmid_at "$key")"
}

# as_nobody: the start of a command line that runs Python as the user nobody.
as_nobody="setpriv --reuid=nobody --regid=$(id -g nobody 2>/dev/null) --clear-groups $PYTHON_NOBODY"

# why_not_nobody: print why lesson 4 cannot show a normal user as nobody, if so.
why_not_nobody() {
    if ! id nobody >/dev/null 2>&1; then
        echo "there is no user nobody"
    elif ! $as_nobody -c 'import os, sys; sys.path[0] = sys.argv[1]; import shmm; os.stat(".")' \
        "$here" 2>/dev/null; then
        echo "nobody cannot run $PYTHON_NOBODY on $here from $dir"
    fi
}

lesson_4() {
    tutorial "made without a mode, the segment had perms 0; with 0666, perms 666; IPC_STAT printed the mode as 438"
    local user=shmm.py why
    if [[ $(id -u) == 0 ]]; then
        why=$(why_not_nobody)
        if [[ -n $why ]]; then
            say "Root is not stopped by perms; a normal user's view is skipped: $why."
            user=""
        else
            say "As root, the normal user is nobody:"
            user="$as_nobody $here_q/shmm.py"
        fi
    fi
    if [[ -n $user ]]; then
        create_segment_as "$user"
        show_ipcs "$id"
        expect "perms in ipcs -m" 0 "$(ipcs_column "$id" 4)"
        say "Perms 0 let no one read it, not even its owner:"
        run "$user read $id"
        expect "read's exit status (4, PERMISSION_DENIED)" 4 "$status"
        expect_said "the kernel says EACCES" "EACCES (Permission denied)"
        expect_said "the owner is told how to open it" "shmm.py chmod $id 0600\`"
        if [[ $(id -u) == 0 ]]; then
            say "Root is not stopped by perms (CAP_IPC_OWNER):"
            run "shmm.py read $id"
            expect "root's read: exit status" 0 "$status"
        else
            say "Root would pass: CAP_IPC_OWNER skips the permission check (capabilities(7))."
        fi
        say "IPC_SET needs ownership, not read permission: the owner opens it (the advice above):"
        run "$user chmod $id 0600"
        expect_said "chmod says so" "mode 0 -> 0600"
        expect "perms in ipcs -m" 600 "$(ipcs_column "$id" 4)"
        run "$user read $id"
        expect "read's exit status" 0 "$status"
        run "$user rm $id"
        expect "the segment at $key (/proc/sysvipc/shm)" "" "$(shmid_at "$key")"
    fi
    say "With a mode, as the tutorial's 0666:"
    create_segment "--mode 0666"
    show_ipcs "$id"
    expect "perms in ipcs -m" 666 "$(ipcs_column "$id" 4)"
    run "shmm.py stat $id"
    expect_said "IPC_STAT's mode, as the tutorial printed it" "mode in decimal: 438"
    expect_said "which is 0666 in octal" "octal 0666"
    remove_segment
}

# attached NAME: NAME, a shmm.py attach, has printed nattch: it holds the segment.
attached() { grep -q '^nattch ' "$logs/$1"; }

# hold NAME: a FIFO NAME for a holder's stdin, kept open here, so that
# `echo >NAME` ends its hold, and nothing else does.
hold() {
    local fd
    mkfifo "$1" && exec {fd}<>"$1"
    held+=("$fd")
}

lesson_5() {
    local page size range
    page=$(getconf PAGESIZE)
    size=$((page + 1))
    tutorial "4097 bytes: ipcs -m said 4097, but the kernel allocates whole pages: two"
    create_segment "--size $size --mode 0600"
    show_ipcs "$id"
    expect "bytes in ipcs -m" "$size" "$(ipcs_column "$id" 5)"
    hold hold5
    start holder "shmm.py attach $id <hold5"
    wait_until "the holder to attach" attached holder
    show_new holder
    grep -q -F "mapped: $((2 * page)) bytes = 2 pages of $page" "$logs/holder" ||
        disagree "attach did not see $((2 * page)) bytes = 2 pages in /proc/self/maps"
    printf '  ok: %s bytes map %s bytes = 2 pages\n' "$size" "$((2 * page))"
    say "The kernel's map of the holder's memory: a SYSV mapping, inode = shmid:"
    run "grep SYSV /proc/${pids[holder]}/maps"
    read -r range _ < <(awk -v id="$id" '$5 == id' "/proc/${pids[holder]}/maps")
    expect "the length of its mapping in /proc/${pids[holder]}/maps" $((2 * page)) \
        $((16#${range#*-} - 16#${range%-*}))
    say "The whole second page is mapped, though the segment uses only its first byte:" \
        "so make a segment's size a whole number of pages, as the tutorial advises."
    run "echo >hold5"
    finish holder
    show_new holder
    expect "the holder's exit status" 0 "$status"
    remove_segment
}

lesson_6() {
    tutorial "while :; do ipcs -m; sleep 1; done showed nattch 0, then 1 with ./a attached, 2 with ./b, 1, 0; f() detached while its process went on"
    local seen=()
    create_segment "--mode 0600"
    show_ipcs "$id"
    expect "nattch in ipcs -m, made but never attached" 0 "$(ipcs_column "$id" 6)"
    seen+=("$(ipcs_column "$id" 6)")
    local holder
    for holder in 1 2; do
        hold "hold$holder"
        start "holder$holder" "shmm.py attach $id <hold$holder"
        wait_until "holder $holder to attach" attached "holder$holder"
        show_new "holder$holder"
        show_ipcs "$id"
        expect "nattch in ipcs -m" "$holder" "$(ipcs_column "$id" 6)"
        seen+=("$(ipcs_column "$id" 6)")
    done
    for holder in 1 2; do
        say "A line ends holder $holder's hold: it detaches, and says nattch while it still runs:"
        run "echo >hold$holder"
        finish "holder$holder"
        show_new "holder$holder"
        grep -q "^shmdt: detached; nattch $((2 - holder)), while this process" "$logs/holder$holder" ||
            disagree "holder $holder did not see nattch $((2 - holder)) after its shmdt"
        show_ipcs "$id"
        expect "nattch in ipcs -m" $((2 - holder)) "$(ipcs_column "$id" 6)"
        seen+=("$(ipcs_column "$id" 6)")
    done
    printf '  ok: nattch %s, step by step\n' "${seen[*]}"
    remove_segment
}

lesson_7() {
    tutorial "b wrote what was typed into the segment, and a printed it: no system call carries the bytes"
    create_segment "--mode 0600"
    run "shmm.py write $id 'hello, 共享内存'"
    expect "write's exit status" 0 "$status"
    say "Another process, which never spoke to the writer:"
    run "shmm.py read $id"
    expect "what the reader printed" "hello, 共享内存" "$output"
    remove_segment
}

lesson_8() {
    tutorial "its reader printed the segment every second: a line typed between two looks was never printed, and each line came again and again"
    create_segment "--mode 0600"
    run "shmm.py write $id 'first line'"
    run "shmm.py write $id 'second line'"
    run "shmm.py read $id"
    expect "what the reader printed: the first line was lost" "second line" "$output"
    run "shmm.py read $id"
    expect "what the reader printed again: the second line, repeated" "second line" "$output"
    say "Nothing tells the writer that the reader has read, nor the reader that there is something new." \
        "Lesson 10 adds the tutorial's FIFO."
    remove_segment
}

lesson_9() {
    tutorial "shmctl(IPC_RMID) removed the segment; its shmids went 0, 1, 2, ... from one run to the next"
    create_segment "--mode 0600"
    start reader "shmm.py read $id --every 0.2 >every.txt"
    wait_until "the reader to attach" nattch_is "$id" 1
    run "shmm.py rm $id"
    say "Removed while attached: the kernel only marks it, and takes its key away:"
    show_ipcs "$id"
    expect "its key in ipcs -m" 0x00000000 "$(ipcs_column "$id" 1)"
    expect "its status in ipcs -m" dest "$(ipcs_column "$id" 7)"
    expect "nattch in ipcs -m" 1 "$(ipcs_column "$id" 6)"
    say "Who knows its shmid still reaches it; Linux even lets a new shmat by shmid in (shmctl(2), NOTES):"
    run "shmm.py write $id 'after IPC_RMID'"
    expect "write's exit status" 0 "$status"
    wait_until "the reader to print it" printed every.txt "after IPC_RMID"
    run "uniq -c every.txt"
    printf '  ok: the reader, attached, printed it\n'
    run "kill ${pids[reader]}"
    finish reader
    expect "the reader's exit status: it died by SIGTERM, once detached" 143 "$status"
    say "At its last detach, the segment goes:"
    show_ipcs "$id"
    segment_exists "$id" && disagree "shmid $id is still there after its last detach"
    printf '  ok: shmid %s is gone (/proc/sysvipc/shm)\n' "$id"

    local shift=15 first
    grep -q -w ipcmni_extend /proc/cmdline && shift=24
    say "Why shmids are large: the same key again, after rm:"
    create_segment "--mode 0600"
    first=$id
    remove_segment
    run "shmm.py create --path . --proj-id $proj --mode 0600"
    id=$(tail -n 1 <<<"$output")
    [[ $id != "$first" ]] || disagree "the second segment at $key has the same shmid, $id"
    printf '  ok: a new shmid, %s, not %s\n' "$id" "$first"
    say "shmid = index + $((1 << shift)) x sequence (ipc/util.c: IPCMNI_SHIFT $shift):"
    for shmid in "$first" "$id"; do
        say "  $shmid = $((shmid % (1 << shift))) + $((1 << shift)) x $((shmid >> shift))"
    done
    expect "the sequence number in IPC_STAT's shm_perm.__seq" $((id >> shift)) "$(sequence_of "$id")"
    remove_segment
}

# sequence_of SHMID: the __seq field of SHMID's struct ipc_perm (IPC_STAT).
sequence_of() {
    PYTHONPATH=$here "$PYTHON" -c 'import ctypes, shmm, sys
status = shmm.shmid_ds()
shmm.shmctl(int(sys.argv[1]), shmm.IPC_STAT, ctypes.byref(status))
print(status.shm_perm.seq)' "$1"
}

# send_three_lines_while_processa_is_stopped FIFO: stop processa, give its
# writer three lines and then end of input (FIFO is the writer's stdin).
send_three_lines_while_processa_is_stopped() {
    run "kill -STOP ${pids[a]}"
    run "printf '%s\n' one two three >$1"
    say "(and the end of processb's input, as Ctrl-D)"
    end_input
}

# end_input: close the FIFO held last: its reader gets end of file.
end_input() {
    local fd=${held[-1]}
    exec {fd}>&-
    unset 'held[-1]'
}

lesson_10() {
    tutorial "its last version: b writes a line into the segment and a byte into ./myfifo; a waits for the byte, then prints the segment; nothing tells b when a has printed"
    fresh_key
    hold in10
    start a "processa.py --seed-protocol --path . --proj-id $proj"
    wait_until "processa to create its segment" segment_at_key
    start b "processb.py --seed-protocol --path . --proj-id $proj <in10"
    wait_until "processb to find processa and attach (nattch 2)" nattch_is "$(shmid_at "$key")" 2
    show_new a
    show_new b
    say "processa is stopped (as if slow) while three lines go in:"
    send_three_lines_while_processa_is_stopped in10
    finish b
    show_new b
    expect "processb's exit status: it has ended" 0 "$status"
    run "kill -CONT ${pids[a]}"
    finish a
    show_new a
    expect "processa's exit status" 0 "$status"
    expect "times processa printed the last line: the other two are lost" 3 \
        "$(times_printed "$logs/a" "Message received: three")"
    expect "lines it printed in all" 3 "$(grep -c '^Message received: ' "$logs/a")"

    say "The same with our channel: processb never fills a slot that processa has not handed" \
        "back (the count of free slots, in the segment). With four slots, there is room for" \
        "the three lines (printf writes them one by one: one frame, or up to three) and the" \
        "END frame; then processb must wait:"
    fresh_key
    hold in10b
    start a "processa.py --slots 4 --path . --proj-id $proj"
    wait_until "processa to listen" grep -q "waiting for processb" "$logs/a"
    show_new a
    start b "processb.py -v --path . --proj-id $proj <in10b"
    wait_until "processb to hold the channel" grep -q "took the writer's lock" "$logs/b"
    show_new b
    send_three_lines_while_processa_is_stopped in10b
    wait_until "processb to wait for processa" grep -q "waiting for processa to take every frame" "$logs/b"
    show_new b
    running b || disagree "processb ended while processa was stopped"
    printf '  ok: processb waits for processa, still running\n'
    run "kill -CONT ${pids[a]}"
    finish b
    expect "processb's exit status" 0 "$status"
    finish a
    show_new a
    show_new b
    expect "processa's exit status" 0 "$status"
    expect "what processa printed: every line, in order" \
        "one two three" "$(sed -n 's/^Message received: //p' "$logs/a" | paste -s -d ' ')"
}

segment_at_key() { [[ -n $(shmid_at "$key") ]]; }

lesson_11() {
    tutorial "the same with its own a.cc and b.cc; and at the end of b's input, a printed the last line over and over"
    local why
    why=$(why_no_tutorial)
    if [[ -n $why ]]; then
        say "Skipped: $why."
        skipped+=(11)
        return
    fi
    say "a.cc, b.cc, shmm.hpp and comm.h, as the tutorial's last listing has them (in" \
        "$(shown_as "$seed_text")), but for PATHNAME, the ftok path: here, this directory's cpp/"
    { mkdir cpp && cd cpp; } || disagree "cannot make cpp/"
    extract_tutorial "$dir/cpp" "$dir/cpp" || disagree "the tutorial's programs cannot be taken from its text"
    key=$(ftok_key 0x46) # its KEYHINT 0x1246, of which ftok keeps 0x46
    keys+=("$key")
    [[ -z $(shmid_at "$key") ]] || disagree "a segment is at key $key already: run the lessons again"
    run "g++ a.cc -o a"
    run "g++ b.cc -o b"
    [[ -x a && -x b ]] || disagree "g++ did not build a and b"
    hold in11
    start a "stdbuf -oL ./a >a.txt"
    wait_until "a.cc to make ./myfifo" test -p myfifo
    start b "stdbuf -o0 ./b <in11 >b.txt"
    wait_until "b.cc to find a.cc's segment and attach (nattch 2)" nattch_is "$(shmid_at "$key")" 2
    show_ipcs "$(shmid_at "$key")"
    run "kill -STOP ${pids[a]}"
    run "printf '%s\n' one two three >in11"
    wait_until "b.cc to take the three lines" prompted 4
    run "kill -CONT ${pids[a]}"
    wait_until "a.cc to print three lines" test "$(wc -l <a.txt)" -ge 3
    run "cat a.txt"
    expect "times a.cc printed the last line: the other two are lost" 3 \
        "$(times_printed a.txt "Message received: three")"
    say "Now the end of b.cc's input (Ctrl-D). fgets fails and leaves the buffer as it was," \
        "and b.cc goes on writing its byte:"
    end_input
    run "sleep 0.2" # the length of the experiment, not a wait for an event
    run "wc -l <a.txt"
    ((output > 3)) || disagree "a.cc printed $output lines, expected more than 3"
    run "kill -TERM ${pids[b]}"
    finish b
    finish a
    expect "every line a.cc printed is the last one" "Message received: three" "$(sort -u a.txt)"
    printf '  ok: a.cc printed it %s times in all\n' "$(wc -l <a.txt)"
    expect "a.cc's exit status, at the end of file on ./myfifo" 0 "$status"
    expect "the segment at $key (a.cc removed it)" "" "$(shmid_at "$key")"
    cd "$dir" || disagree "cannot go back to $dir"
}

# prompted N: b.cc has printed its prompt N times.
prompted() { (($(grep -o 'Please enter: ' b.txt | wc -l) >= $1)); }

# --- Run --------------------------------------------------------------------------

say "The lessons of the tutorial, each run and checked against the kernel, in $dir" \
    "(the ftok path of every command: --path .; processa's FIFOs: SHMM_FIFO_DIR=$dir/fifos)." \
    "Below, shmm.py stands for python3 $here/shmm.py; processa.py and processb.py likewise."
forced=$(cat /proc/sys/kernel/shm_rmid_forced 2>/dev/null)
[[ $forced == 1 ]] && say "Here /proc/sys/kernel/shm_rmid_forced is 1: a segment dies with its last process, so lessons $outliving, whose segments outlive their commands, are skipped."
for lesson in $(seq "$first" "$last"); do
    printf '\n== Lesson %s: %s ==\n' "$lesson" "${titles[lesson]}"
    if [[ $forced == 1 && " $outliving " == *" $lesson "* ]]; then
        say "Skipped: shm_rmid_forced is 1."
        skipped+=("$lesson")
        continue
    fi
    next_proj=$((lesson * 16))
    "lesson_$lesson"
    if [[ -t 0 && $lesson != "$last" ]]; then
        read -r -p "(Enter: the next lesson) "
    fi
done
if ((${#skipped[@]} == last - first + 1)); then
    printf '\nNothing ran: lesson %s skipped, as said above.\n' "${skipped[*]}"
elif ((first == last)); then
    printf '\nLesson %s agreed with the kernel.\n' "$first"
elif ((${#skipped[@]})); then
    printf '\nEvery lesson that ran agreed with the kernel; skipped, as said above: %s.\n' "${skipped[*]}"
else
    printf '\nEvery lesson agreed with the kernel.\n'
fi
