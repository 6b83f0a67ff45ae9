"""processb.py - the writer: attaches to processa's segment and sends what you type.

Start processa.py first (if it is not up yet, processb waits for it, up to
--wait seconds). Each line you type is one message; Ctrl-D ends.

    terminal 2 (processa runs in terminal 1):
    $ make run-b
    [Info][...]::ftok('/home/you/shm', 0x1246) gave key 0x46010004
    [Info][...]::shmat mapped shmid 3 at 0x7fb5ae62d000
    [Info][...]::took the writer's lock (flock on the notify FIFO): the only writer now
    Please enter: hello                  (terminal 1: Message received: hello)
    Please enter: ^D
    [Info][...]::sent 1 message; processa has taken them all
    [Info][...]::detached from shmid 3 (shmdt)

Input can be piped in too: `seq 100000 | python3 processb.py` sends 100,000
messages, each exactly once and in order, because processb never refills a
slot before processa has handed it back. With --raw, stdin is streamed as
bytes, binary safe: `python3 processb.py --raw < photo.jpg` arrives whole in
`python3 processa.py --raw > copy.jpg`.

In order, it: derives the key with ftok(3); waits until processa listens on
its FIFOs; finds the segment with shmget(2) without creating it (flags 0),
checks its size and mode, and attaches it with shmat(2); checks that
processa expects what we send (lines, or bytes with --raw); takes the
writer's lock, so that one processb at a time writes; sends, reading stdin
straight into the slots; ends with an END frame, so that processa knows the
stream is whole; and at the end (or on a signal) detaches with shmdt(2). It
never removes the segment: that is the creator's job.

Exit status: 0 when processa has taken every message, others as listed in
comm.py and README.md. After signal N it detaches and dies by that signal,
so that a script around it stops too; the shell shows 128 + N.

Companion: processa.py (the reader). Library: shmm.py. Constants: comm.py.
Man pages: ftok(3), shmget(2), shmat(2), shmdt(2), fifo(7), flock(2), sem_overview(7).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import locale
import logging
import os
import select
import shlex
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import comm
import shmm
from comm import ExitCode
from shmm import Refused, show_key

log = logging.getLogger("processb")

PROMPT = "Please enter: "
READ_SIZE = 1 << 16   # bytes of lines per frame at most: bounds what processa prints at once
POLL_INTERVAL = 0.01  # seconds between looks for processa while waiting
POKE_INTERVAL = 0.02  # seconds between pokes of the main thread, once it should stop
HOLD_SECONDS = 1.0    # seconds a reader blocked in open(2) of ./myfifo may take to hold it
POKE = signal.SIGURG  # what the watcher thread interrupts the main thread with
T = TypeVar("T")


# --- 1. The story ---------------------------------------------------------------------


def send(args: argparse.Namespace, closed: list[str]) -> int:
    """The whole story: make the key, find processa, attach its segment, send
    stdin, detach. Each step is a function below, or in shmm.py."""
    if "stdin" in closed:
        raise Refused(ExitCode.FAILURE, "stdin is closed (<&-): there is nothing to send; give"
                      " processb a terminal, a pipe or a file, such as < lines.txt")
    key = shmm.key_from_arguments(args)
    log.info("ftok(%r, %#x) gave key %s", args.path, args.proj_id, show_key(key))
    if args.seed_protocol:
        return send_tutorial_protocol(key, args)
    notify_fd, ack_fd = wait_for_processa(key, args, lambda: shmm.connect_writer(key),
                                          shmm.fifo_paths(key)[0])  # the FIFOs
    # The cleanup undoes each step, in reverse, on every way out; processb
    # only detaches: removing the segment is its creator's job.
    with shmm.Cleanup() as cleanup:
        cleanup.callback(os.close, notify_fd)
        cleanup.callback(os.close, ack_fd)
        memory = attach_segment(cleanup, key, args).memory
        check_stream(memory, key, args.raw)      # lines or bytes, as processa expects
        take_writer_lock(notify_fd, memory, key)  # one writer at a time
        layout = shmm.read_header(memory)
        writer = shmm.Writer(memory, layout.slots, layout.slot_size, notify_fd, ack_fd)
        with stop_when_processa_leaves(ack_fd):  # (the sidebar at the end)
            sent = send_input(writer, args.raw)   # until end of input, then the END frame
        log.info("sent %s; processa has taken them all", sent)
    return ExitCode.OK


# --- 2. Find processa -----------------------------------------------------------------
#
# processb may start first. It then waits, but on the FIFOs rather than on
# the segment alone: a segment at our key may be one that a crashed processa
# left behind, and a processb attached to it would make it look in use, so
# that the next processa would refuse to replace it. Only an open(2) of the
# notify FIFO that succeeds proves that a processa is there and listening.


def find_segment(key: int, args: argparse.Namespace) -> shmm.Segment:
    """Find the segment at key (never create it) and check that we may use it."""
    try:
        segment = shmm.Segment.find(key, args.size)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        size = shmm.Segment.find(key).status().shm_segsz
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"{shmm.describe(err)}: the segment at key {show_key(key)} has {size}"
                      f" bytes, fewer than --size {args.size}; run processb with --size {size},"
                      f" or processa with --size {args.size}") from None
    try:
        status = segment.status()
    except PermissionError as err:
        # No --mode helps another user: processa's FIFOs are private to its own.
        raise Refused(ExitCode.PERMISSION_DENIED, f"{shmm.describe(err)}: at key {show_key(key)}, "
                      + shmm.why_unreadable(segment.shmid, "run processb as uid {uid}, the user"
                                            " who runs processa, whose FIFOs only that user"
                                            " can open")) from None
    mode = status.shm_perm.mode & 0o777
    # Only the group's and the others' read and write bits let anyone else
    # in: the owner's bits are ours, and shmat(2) has no use for x bits.
    if mode & ~args.mode & 0o066:
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"the segment at key {show_key(key)} has mode {mode:04o}, more open than"
                      f" --mode {args.mode:04o}: {who_else(mode & ~args.mode, status)}."
                      f" Pass --mode {mode:04o} to send anyway")
    return segment


def who_else(bits: int, status: shmm.shmid_ds) -> str:
    """Say who besides us can reach what we send through a segment whose mode
    has these group (0o060) and other (0o006) bits."""
    can = {4: "can read", 2: "can change", 6: "can read and change"}
    group = status.shm_perm.mode >> 3 & 6 if bits & 0o060 else 0
    other = status.shm_perm.mode & 6 if bits & 0o006 else 0
    gid = status.shm_perm.gid
    members = f"members of group {shmm.group_name(gid)} (gid {gid})"
    if group and group == other:
        return f"{members} and every other user {can[group]} what you send"
    who = [f"{members} {can[group]}"] if group else []
    who += [f"every other user {can[other]}"] if other else []
    return ", and ".join(who) + " what you send"


def attach_segment(cleanup: shmm.Cleanup, key: int, args: argparse.Namespace) -> shmm.Segment:
    """Find processa's segment and attach it; the cleanup detaches it (never removes)."""
    with shmm.signals_deferred():  # registered for detaching before a signal can stop us
        segment = cleanup.enter_context(find_segment(key, args))
        segment.attach()
    log.info("shmat mapped shmid %d at %#x", segment.shmid, segment.address)
    return segment


def wait_for_processa(key: int, args: argparse.Namespace, connect: Callable[[], T],
                      fifo_path: str) -> T:
    """Return what connect() returns once processa listens on fifo_path; give up
    after --wait seconds. (connect opens our two FIFOs, or the tutorial's one.)"""
    deadline = time.monotonic() + args.wait
    attempt = 0
    while True:
        attempt += 1
        try:
            find_segment(key, args)  # fails at once if we could never use it
            return connect()
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENXIO):
                raise
            log.debug("processa is not listening yet: %s", shmm.describe(err))
        if time.monotonic() >= deadline:
            raise Refused(ExitCode.NO_READER, why_not_listening(key, args, fifo_path))
        # The first attempt often finds processa between its two open(2)
        # calls; only when the second fails too are we really waiting.
        if attempt == 2:
            log.info("waiting up to %g s for processa to listen at key %s", args.wait,
                     show_key(key))
        time.sleep(POLL_INTERVAL)


def why_not_listening(key: int, args: argparse.Namespace, fifo_path: str) -> str:
    """Explain, after waiting, why no processa was found at key."""
    waited = f"after {args.wait:g} s"
    try:
        segment = shmm.Segment.find(key)
    except FileNotFoundError:
        return (f"no segment at key {show_key(key)} {waited}: start processa first, with the"
                " same --path and --proj-id")
    status = segment.status()
    creator = status.shm_perm.cuid
    if creator != os.getuid():
        return (f"shmid {segment.shmid} at key {show_key(key)} was made by uid {creator};"
                " processa's FIFOs are private to its own user, so run processb as that user")
    where = f"shmid {segment.shmid} exists at key {show_key(key)}"
    if not status.shm_nattch:
        cleaner = clean_command(args) if not args.seed_protocol else f"ipcrm -m {segment.shmid}"
        return (f"{where}, but nothing is attached to it and no processa listens on {fifo_path}"
                f" {waited}; if processa crashed, `{cleaner}` removes what it left")
    with segment:
        ours = bytes(segment.attach(readonly=True)[:len(shmm.MAGIC)]) == shmm.MAGIC
    user = f"{where}, in use by pid {status.shm_cpid}"
    if ours and args.seed_protocol:
        return (f"{user}, a processa of this project's own protocol, not the tutorial's: run"
                " processb without --seed-protocol, as processa runs")
    if not ours and not args.seed_protocol:
        return (f"{user}, but no processa listens on {fifo_path} {waited}: if it speaks the"
                " tutorial's protocol (processa --seed-protocol, or the tutorial's a.cc), run"
                " processb with --seed-protocol, in the directory where it runs")
    if args.seed_protocol:
        return (f"{user}, but no reader listens on {fifo_path} {waited}: run processb in the"
                " directory where the reader runs (./myfifo is looked for there)")
    return (f"{user}, but no processa listens on {fifo_path} {waited}: is it stopped"
            f" (Ctrl-Z), or does it run with another {comm.FIFO_DIR_VARIABLE} than this one?")


def clean_command(args: argparse.Namespace) -> str:
    """Return the shmm.py clean command line for our key, to run from anywhere."""
    shmm_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shmm.py")
    named = os.environ.get(comm.FIFO_DIR_VARIABLE)
    where = f"{comm.FIFO_DIR_VARIABLE}={shell_quote(named)} " if named else ""
    path = os.path.abspath(args.path)
    return (f"{where}python3 {shell_quote(shmm_py)} clean --path {shell_quote(path)}"
            f" --proj-id {args.proj_id:#x}")


def shell_quote(text: str) -> str:
    """Quote text for the shell, as shlex.quote does; text that is not all
    printable (a path with bytes that are not UTF-8, a newline) goes in bash's
    $'...' form, so that the command still works when pasted."""
    if text.isprintable():
        return shlex.quote(text)
    escaped = (chr(byte) if 0x20 <= byte < 0x7F and byte not in b"'\\" else f"\\x{byte:02x}"
               for byte in os.fsencode(text))
    return "$'" + "".join(escaped) + "'"


# --- 3. One writer at a time, of the kind processa expects ----------------------------
#
# Two writers would fill the same slots and interleave their frames. The
# writer therefore takes an exclusive flock(2) on the notify FIFO: atomic,
# and released by the kernel when its holder dies, even by kill -9. The
# lock holder records its pid in the segment header, so that a refused
# processb can name it, and so that a processa serves only one processb.


def check_stream(memory: memoryview, key: int, raw: bool) -> None:
    """Refuse to send lines to a processa that expects bytes (--raw), or the other way."""
    stream = shmm.read_header(memory).stream
    if stream != (shmm.BYTES if raw else shmm.LINES):
        option = "with --raw" if stream == shmm.BYTES else "without --raw"
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"processa at key {show_key(key)} expects {shmm.STREAM_NAMES[stream]};"
                      f" run processb {option}, as processa runs")


def take_writer_lock(notify_fd: int, memory: memoryview, key: int) -> None:
    """Become processa's only writer, or raise Refused naming the one it has."""
    try:
        fcntl.flock(notify_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = shmm.read_header(memory).writer_pid
        who = f"processb pid {holder}" if holder else "another processb"
        raise Refused(ExitCode.WRITER_BUSY,
                      f"{who} is already writing to processa at key {show_key(key)};"
                      " one writer at a time: wait until it has finished") from None
    served = shmm.read_header(memory).writer_pid
    if served:
        raise Refused(ExitCode.WRITER_BUSY,
                      f"processa at key {show_key(key)} has already served processb pid"
                      f" {served} and ends once it has noticed; start processa again")
    shmm.claim_header(memory, os.getpid())
    log.info("took the writer's lock (flock on the notify FIFO): the only writer now")


# --- 4. What to send ------------------------------------------------------------------
#
# From a pipe or a file: stdin is read straight into a free slot (readv(2)
# into a view of the segment), and the frame is sent up to its last newline;
# the rest, the start of a line, is carried over into the next frame. So a
# frame holds as many whole lines as fit, and no Python code runs per line.
# A line longer than a frame goes as several records flagged MORE, up to
# comm.MAX_LINE bytes. With --raw, the same without the cut. From a
# terminal: one line per Enter, edited with readline, sent at once.


def send_input(writer: shmm.Writer, raw: bool) -> str:
    """Send stdin through writer until end of input; say how much was sent."""
    if raw:
        sent = shmm.counted(send_bytes(writer), "byte")
    elif os.isatty(0):
        sent = shmm.counted(send_typed_lines(writer), "message")
    else:
        sent = shmm.counted(send_lines(writer), "message")
    log.debug("end of input: sending the END frame, waiting for processa to take every frame")
    writer.close()
    return sent


def send_lines(writer: shmm.Writer) -> int:
    """Send stdin's lines, frame by frame; return how many were sent."""
    lines = 0
    tail = b""      # the start of a line that the last frame could not end
    sent_of_line = 0  # bytes of the current line sent already, flagged MORE
    while True:
        room = writer.reserve()[:READ_SIZE]
        room[:len(tail)] = tail
        filled = len(tail)
        while True:  # read until a newline comes or the frame is full
            got = read_stdin(room[filled:])
            if not got:
                return lines + send_last_line(writer, room, filled, sent_of_line)
            new = bytes(room[filled:filled + got])
            filled += got
            last = new.rfind(b"\n")
            if last >= 0:
                # Only the first line that ends here can be long: it may have
                # begun in earlier frames. The others fit in this one.
                check_line_length(sent_of_line + filled - got + new.find(b"\n"))
                end = filled - got + last + 1
                tail = bytes(room[end:filled])  # copied: the slot goes to processa
                writer.commit(end)
                lines += new.count(b"\n")
                sent_of_line = 0
                break
            if filled == len(room):
                sent_of_line += filled
                check_line_length(sent_of_line)
                writer.commit(filled, more=True)
                tail = b""
                break


def send_last_line(writer: shmm.Writer, room: memoryview, filled: int, sent_of_line: int) -> int:
    """At end of input, send the last line if it had no newline; return 1 if there was one."""
    if not filled and not sent_of_line:
        return 0
    check_line_length(sent_of_line + filled)
    if filled < len(room):
        room[filled] = ord("\n")
        writer.commit(filled + 1)
    else:
        writer.commit(filled, more=True)
        writer.send(b"\n")
    return 1


def check_line_length(length: int) -> None:
    """Refuse a line longer than text mode carries."""
    if length > comm.MAX_LINE:
        raise Refused(ExitCode.USAGE, f"stdin has a line longer than {comm.MAX_LINE} bytes,"
                      " the most text mode carries; for such lines or binary data, run both"
                      " processa and processb with --raw")


def send_bytes(writer: shmm.Writer) -> int:
    """Send stdin as bytes, frame by frame (--raw); return how many were sent."""
    total = 0
    while True:
        room = writer.reserve()
        got = read_stdin(room)
        if not got:
            return total
        writer.commit(got)
        total += got


def read_stdin(room: memoryview) -> int:
    """Read what stdin has into room, up to its size; return how much, 0 at its end."""
    while True:
        try:
            return os.readv(0, [room])
        except BlockingIOError:  # EAGAIN: stdin is non-blocking and has nothing yet
            select.select([0], [], [])  # until it has
        except OSError as err:
            raise Refused(ExitCode.FAILURE,
                          f"reading stdin: {shmm.describe_errno(err)}") from None


# --- 5. The tutorial's protocol (--seed-protocol) -------------------------------------
#
# With --seed-protocol we speak to the tutorial's a.cc (shmm.py section 8): each
# line, newline kept, goes into the segment as a C string, announced by one
# byte on ./myfifo. Like fgets(3) into a 4096-byte buffer, a longer line
# goes as several strings of at most 4095 bytes. Nothing tells us when the
# reader has printed one, so piped input outruns it and messages are lost.
#
# The protocol names its reader by a file in the current directory, and
# nothing in the segment says whose it is, so we check before we write: that
# ./myfifo is a FIFO (never a file or a symlink planted under that name, which
# we never open), that the segment at our key is not one of processa's own
# protocol, and that the process that created it is the one that holds
# ./myfifo (/proc/PID/fd): otherwise our strings would go into one reader's
# segment and our bytes to another reader, who would print what it already had.


def send_tutorial_protocol(key: int, args: argparse.Namespace) -> int:
    """Send each line of stdin as the tutorial's b.cc does."""
    fifo_fd = wait_for_processa(key, args, open_tutorial_fifo, f"./{comm.SEED_FIFO}")
    with shmm.Cleanup() as cleanup:
        cleanup.callback(os.close, fifo_fd)
        segment = attach_segment(cleanup, key, args)
        memory = segment.memory
        check_tutorial_reader(segment, fifo_fd, key)
        most = len(memory) - 1  # bytes of a string, before its NUL
        if most < 1:
            raise Refused(ExitCode.SEGMENT_CONFLICT, f"the segment at key {show_key(key)} has"
                          f" {len(memory)} byte: no room for a line and its NUL; the tutorial's"
                          " reader makes one of 4096")
        with stop_when_processa_leaves(fifo_fd):
            for line in lines_with_newlines(most):
                for start in range(0, len(line), most):
                    shmm.write_c_string(memory, line[start:start + most])
                    announce(fifo_fd)
    return ExitCode.OK


def lines_with_newlines(most: int) -> Iterator[bytes]:
    """Yield stdin's lines as fgets(3) gives them: each with its newline, and
    from a pipe or a file at most `most` bytes at a time, however long the line."""
    if sys.stdin.isatty():
        return (line + b"\n" for line in terminal_lines())
    return iter(lambda: sys.stdin.buffer.readline(most), b"")


def announce(fifo_fd: int) -> None:
    """Write the tutorial's one byte per message."""
    try:
        os.write(fifo_fd, b"c")
    except BrokenPipeError:
        raise shmm.PeerGone("the reader has gone away (./myfifo has no reader)") from None


def open_tutorial_fifo() -> int:
    """Open ./myfifo for writing if it is a FIFO that a reader has open; ENOENT
    or ENXIO while there is none. Anything else under that name is refused, unopened."""
    info = os.lstat(comm.SEED_FIFO)
    if not stat.S_ISFIFO(info.st_mode):
        raise Refused(ExitCode.FAILURE, f"./{comm.SEED_FIFO} is {shmm.file_kind(info.st_mode)},"
                      " not the tutorial's FIFO, and was left untouched; run processb from the"
                      " directory where its reader runs")
    fifo_fd = os.open(comm.SEED_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    opened = os.fstat(fifo_fd)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        os.close(fifo_fd)
        raise Refused(ExitCode.FAILURE, f"./{comm.SEED_FIFO} was replaced while we opened it;"
                      " try again")
    os.set_blocking(fifo_fd, True)
    return fifo_fd


def check_tutorial_reader(segment: shmm.Segment, fifo_fd: int, key: int) -> None:
    """Refuse a segment of processa's own protocol, and a ./myfifo that is not
    held by the process that created the segment at key."""
    assert segment.memory is not None, "attached"
    where = f"the segment at key {show_key(key)}"
    if bytes(segment.memory[:len(shmm.MAGIC)]) == shmm.MAGIC:
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"{where} is laid out by a processa of this project's own protocol, not"
                      " the tutorial's: run processb without --seed-protocol, as processa runs")
    creator = segment.status().shm_cpid
    if not holds_fifo(creator, fifo_fd):
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"./{comm.SEED_FIFO} is not held by pid {creator}, which created {where}:"
                      " its reader reads another segment, and nothing we sent would be"
                      " printed. Run processb in the directory where the reader of this key"
                      " runs, or with the --path and --proj-id of the reader of ./myfifo")


def holds_fifo(pid: int, fifo_fd: int) -> bool:
    """Tell whether process pid holds the FIFO that fifo_fd is open on (/proc/PID/fd),
    waiting a moment for a reader that was blocked in open(2) to get its fd."""
    fifo = os.fstat(fifo_fd)
    deadline = time.monotonic() + HOLD_SECONDS
    while True:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            return False  # it has ended
        except PermissionError:
            raise Refused(ExitCode.PERMISSION_DENIED,
                          f"cannot tell whether pid {pid} reads ./{comm.SEED_FIFO}: its"
                          f" /proc/{pid}/fd is not ours to read; run processb as the user who"
                          " runs the reader") from None
        for name in names:
            with contextlib.suppress(OSError):  # closed meanwhile
                info = os.stat(f"/proc/{pid}/fd/{name}")
                if (info.st_dev, info.st_ino) == (fifo.st_dev, fifo.st_ino):
                    return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


# --- Sidebar: at a terminal, and the thread that watches ------------------------------
#
# What follows can be skipped on a first reading: it makes processb pleasant
# and safe at a terminal (the prompt, line editing, Ctrl-C), and is not
# needed to understand shared memory. The story calls it in three places:
# stop_when_processa_leaves around the sending, send_typed_lines and
# terminal_lines for what is typed.
#
# Sending, we notice a vanished processa by EPIPE or end of file. But at the
# prompt we sit in input(), and would only notice at the next line. So a
# thread waits in poll(2) for POLLHUP on the ack FIFO (processa's end closed)
# and then interrupts the main thread with a POKE signal, whose handler raises.
# (Signal handlers run only in the main thread, and only a signal aimed at
# it, with pthread_kill(3), interrupts the system call it is blocked in.)
#
# The same thread makes sure that Ctrl-C, kill and a closed terminal stop
# us at the prompt. readline waits in select(2) and runs Python's signal
# handlers only when select fails with EINTR; a signal that comes just
# before it enters select (the prompt drawn, select not yet called) would
# wait for the next key. The thread learns of every signal through
# signal.set_wakeup_fd, and once a stop signal has come, pokes the main
# thread until it has left: each poke that finds it in select runs the
# waiting handlers. The poke is SIGURG, which is ignored by default (a stray
# one from outside changes nothing), and any other signal leaves the thread
# watching.


@contextlib.contextmanager
def stop_when_processa_leaves(ack_fd: int) -> Iterator[None]:
    """Raise PeerGone in the main thread as soon as processa closes its FIFOs,
    and let a stop signal interrupt the main thread wherever it waits."""
    gone = threading.Event()  # processa closed its FIFOs
    done = threading.Event()  # the main thread has left the block: stop poking it
    signalled_r, signalled_w = os.pipe()
    for fd in (signalled_r, signalled_w):
        os.set_blocking(fd, False)

    def on_poke(_signum: int, _frame: object) -> None:
        if gone.is_set() and not done.is_set():
            done.set()  # raise once
            raise shmm.PeerGone("processa has gone away")

    def stop_signal_came() -> bool:
        """Take the numbers of the signals that came; tell whether one stops us."""
        with contextlib.suppress(BlockingIOError):
            return any(number in shmm.STOP_SIGNALS for number in os.read(signalled_r, 512))
        return False

    def watch(main_thread: int) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, (*shmm.STOP_SIGNALS, POKE))  # the main thread's
        poller = select.poll()
        poller.register(ack_fd, 0)  # no events asked for: POLLHUP and POLLERR still come
        poller.register(signalled_r, select.POLLIN)
        # Until processa leaves, a stop signal comes or the block ends; any
        # other signal changes nothing.
        while not done.is_set():
            if any(fd == ack_fd for fd, _ in poller.poll()):
                gone.set()
                break
            if stop_signal_came():
                break
        while not done.wait(POKE_INTERVAL):
            signal.pthread_kill(main_thread, POKE)

    signal.signal(POKE, on_poke)
    previous = signal.set_wakeup_fd(signalled_w)
    watcher = threading.Thread(target=watch, args=(threading.get_ident(),), daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(BlockingIOError):
            os.write(signalled_w, b"\0")  # wake the watcher, if it polls, to see that we are done
        watcher.join()  # before its pipe is closed under it
        signal.signal(POKE, signal.SIG_IGN)  # our own close is not news
        signal.set_wakeup_fd(previous)
        os.close(signalled_r)
        os.close(signalled_w)


def send_typed_lines(writer: shmm.Writer) -> int:
    """Send each line typed at the terminal as soon as Enter is pressed."""
    lines = 0
    for line in terminal_lines():
        check_line_length(len(line))
        writer.send(line + b"\n")
        writer.flush()
        lines += 1
    return lines


def terminal_lines() -> Iterator[bytes]:
    """Yield the lines typed at the terminal, prompting on it."""
    # A Python built without readline still reads lines, only unedited.
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - importing it is what gives input() line editing
    # input() decodes what is typed with stdin's encoding and encodes the
    # prompt with stdout's. Bytes that are not valid in it are kept, not an
    # error, and go out as they came.
    encoding = terminal_encoding()
    sys.stdin.reconfigure(encoding=encoding, errors="surrogateescape")
    sys.stdout.reconfigure(encoding=encoding)
    with terminal_to_prompt_on() as terminal:
        while True:
            try:
                with lent_as_stdout(terminal):
                    line = input(PROMPT)
            except EOFError:
                os.write(terminal, b"\n")  # end the prompt's line
                return
            except (shmm.Interrupted, shmm.PeerGone):
                os.write(terminal, b"\n")  # so that what is said next starts a line
                raise
            yield line.encode(encoding, "surrogateescape")


def terminal_encoding() -> str:
    """Return stdin's encoding, unless it is one no terminal speaks (such as
    PYTHONIOENCODING=utf-16, which is not ASCII-compatible): then the locale's."""
    if "a\n".encode(sys.stdin.encoding, "replace") == b"a\n":
        return sys.stdin.encoding
    return locale.getpreferredencoding(False)


@contextlib.contextmanager
def terminal_to_prompt_on() -> Iterator[int]:
    """Yield a descriptor of the terminal to prompt on: stderr if it is one,
    else the terminal that stdin is, opened afresh (with 2>log, the prompts
    still go to the terminal, and line editing still works)."""
    if os.isatty(2):
        yield 2
        return
    fd = os.open(os.ttyname(0), os.O_WRONLY | os.O_NOCTTY)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def lent_as_stdout(terminal: int) -> Iterator[None]:
    """Point file descriptor 1 at the terminal for the length of the block."""
    # input() edits with readline only when fd 1 is a terminal, and draws the
    # prompt there. Lending it the terminal keeps stdout free of prompts, and
    # also lets readline lift the terminal's own limit of 4095 bytes a line.
    saved = os.dup(1)
    os.dup2(terminal, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# --- 6. The command line --------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; --help prints this module's docstring."""
    parser = argparse.ArgumentParser(prog="processb.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shmm.add_channel_options(parser)
    parser.add_argument("--wait", type=shmm.seconds_argument, default=30.0, metavar="SECONDS",
                        help="how long to wait for processa to start (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.seed_protocol and args.raw:
        parser.error("--seed-protocol sends lines through one string: no --raw")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run processb; return its exit status."""
    shmm.end_quietly_on_signals()
    closed = shmm.reopen_closed_standard_streams()
    args = parse_arguments(argv)
    shmm.configure_logging(args.verbose - args.quiet)
    return shmm.run("processb", lambda: send(args, closed))


if __name__ == "__main__":
    sys.exit(main())
