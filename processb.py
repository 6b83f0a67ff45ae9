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
    [Info][...]::sent 1 messages; processa has taken them all
    [Info][...]::detached from shmid 3 (shmdt)

Input can be piped in too: `seq 100000 | python3 processb.py` sends 100,000
messages, each exactly once and in order, because processb never refills a
slot before processa has handed it back. With --raw, stdin is streamed as
bytes, binary safe: `python3 processb.py --raw < photo.jpg` arrives whole in
`python3 processa.py --raw > copy.jpg`.

In order, it: derives the key with ftok(3); waits until processa listens on
its FIFOs; finds the segment with shmget(2) without creating it (flags 0),
checks its size and mode, and attaches it with shmat(2); takes the writer's
lock, so that one processb at a time writes; sends; and at the end (or on a
signal) detaches with shmdt(2). It never removes the segment: that is the
creator's job.

Exit status: 0 when processa has taken every message, others as listed in
comm.py and README.md. After signal N it detaches and dies by that signal,
so that a script around it stops too; the shell shows 128 + N.

Companion: processa.py (the reader). Library: shmm.py. Constants: comm.py.
Man pages: ftok(3), shmget(2), shmat(2), shmdt(2), fifo(7), flock(2).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import math
import os
import select
import signal
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
READ_SIZE = 1 << 16   # bytes read from stdin at a time when it is not a terminal
POLL_INTERVAL = 0.05  # seconds between looks for processa while waiting
T = TypeVar("T")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; --help prints this module's docstring."""
    parser = argparse.ArgumentParser(prog="processb.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shmm.add_channel_options(parser)
    parser.add_argument("--wait", type=wait_argument, default=30.0, metavar="SECONDS",
                        help="how long to wait for processa to start (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.seed_protocol and args.raw:
        parser.error("--seed-protocol sends lines through one string: no --raw")
    return args


def wait_argument(text: str) -> float:
    """Parse --wait: a finite number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds") from None
    # float() also takes "nan" and "inf": nan compares false with everything,
    # so a deadline of nan is never reached, and inf is not a limit either.
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text}: choose a finite number of seconds, 0 or more")
    return seconds + 0.0  # -0 becomes 0, which is how it is said


# --- 1. Find processa ------------------------------------------------------------
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
    if mode & ~args.mode:
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"the segment at key {show_key(key)} has mode {mode:04o}, more open than"
                      f" --mode {args.mode:04o}: other users can read and write what you send."
                      f" Pass --mode {mode:04o} to send anyway")
    return segment


def wait_for_processa(key: int, args: argparse.Namespace, connect: Callable[[], T],
                      fifo_path: str) -> T:
    """Return what connect() returns once processa listens on fifo_path; give up
    after --wait seconds."""
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
            raise Refused(ExitCode.NO_READER, why_not_listening(key, args.wait, fifo_path))
        # The first attempt often finds processa between its two open(2)
        # calls; only when the second fails too are we really waiting.
        if attempt == 2:
            log.info("waiting up to %g s for processa to listen at key %s", args.wait,
                     show_key(key))
        time.sleep(POLL_INTERVAL)


def why_not_listening(key: int, waited: float, fifo_path: str) -> str:
    """Explain, after waiting, why no processa was found at key."""
    try:
        segment = shmm.Segment.find(key)
    except FileNotFoundError:
        return (f"no segment at key {show_key(key)} after {waited:g} s: start processa"
                " first, with the same --path and --proj-id")
    creator = segment.status().shm_perm.cuid
    if creator != os.getuid():
        return (f"shmid {segment.shmid} at key {show_key(key)} was made by uid {creator};"
                " processa's FIFOs are private to its own user, so run processb as that user")
    return (f"shmid {segment.shmid} exists at key {show_key(key)}, but no processa listens on"
            f" {fifo_path} after {waited:g} s; if processa crashed, `python3 shmm.py clean`"
            " removes what it left")


# --- 2. One writer at a time --------------------------------------------------------
#
# Two writers would fill the same slots and interleave their frames. The
# writer therefore takes an exclusive flock(2) on the notify FIFO: atomic,
# and released by the kernel when its holder dies, even by kill -9. The
# lock holder records its pid in the segment header, so that a refused
# processb can name it, and so that a processa serves only one processb.


def take_writer_lock(notify_fd: int, memory: memoryview, key: int) -> None:
    """Become processa's only writer, or raise Refused naming the one it has."""
    try:
        fcntl.flock(notify_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = shmm.read_header(memory)[2]
        who = f"processb pid {holder}" if holder else "another processb"
        raise Refused(ExitCode.WRITER_BUSY,
                      f"{who} is already writing to processa at key {show_key(key)};"
                      " one writer at a time: wait until it has finished") from None
    served = shmm.read_header(memory)[2]
    if served:
        raise Refused(ExitCode.WRITER_BUSY,
                      f"processa at key {show_key(key)} has already served processb pid"
                      f" {served} and ends once it has noticed; start processa again")
    shmm.claim_header(memory, os.getpid())
    log.info("took the writer's lock (flock on the notify FIFO): the only writer now")


# --- 3. Notice at once when processa goes away ---------------------------------------
#
# Sending, we notice a vanished processa by EPIPE or end of file. But at the
# prompt we sit in input(), and would only notice at the next line. So a
# thread waits in poll(2) for POLLHUP on the ack FIFO (processa's end closed)
# and then interrupts the main thread with SIGUSR1, whose handler raises.
# (Signal handlers run only in the main thread, and only a signal aimed at
# it, with pthread_kill(3), interrupts the system call it is blocked in.)


@contextlib.contextmanager
def stop_when_processa_leaves(ack_fd: int) -> Iterator[None]:
    """Raise PeerGone in the main thread as soon as processa closes its FIFOs."""
    def on_hangup(_signum: int, _frame: object) -> None:
        raise shmm.PeerGone("processa has gone away")

    def watch(main_thread: int) -> None:
        poller = select.poll()
        poller.register(ack_fd, 0)  # no events asked for: POLLHUP and POLLERR still come
        poller.poll()
        signal.pthread_kill(main_thread, signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, on_hangup)
    threading.Thread(target=watch, args=(threading.get_ident(),), daemon=True).start()
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # our own close is not news


# --- 4. What to send --------------------------------------------------------------
#
# From a terminal: one message per line, edited with readline. From a pipe:
# stdin in large reads, cut at newlines; a line longer than one read is sent
# on as more frames of the same message. With --raw: the whole input is one
# message, streamed in frames as it is read.


def send_input(writer: shmm.Writer, raw: bool) -> None:
    """Send stdin through writer until end of input."""
    if raw:
        for chunk in stdin_chunks():
            writer.send(chunk, more=True)
            writer.flush()
    elif sys.stdin.isatty():
        for line in terminal_lines():
            writer.send(line)
            writer.flush()
    else:
        for chunk in stdin_chunks():
            *lines, rest = chunk.split(b"\n")
            for line in lines:
                writer.send(line)
            if rest:
                writer.send(rest, more=True)
            writer.flush()  # before we may wait for more input
    writer.close()


def stdin_chunks() -> Iterator[bytes]:
    """Yield stdin in reads of up to READ_SIZE bytes, until end of file."""
    while True:
        chunk = os.read(sys.stdin.fileno(), READ_SIZE)
        if not chunk:
            return
        yield chunk


def terminal_lines() -> Iterator[bytes]:
    """Yield the lines typed at the terminal, prompting on stderr."""
    # A Python built without readline still reads lines, only unedited.
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - importing it is what gives input() line editing
    while True:
        try:
            with stdout_on_stderr():
                line = input(PROMPT)
        except EOFError:
            print(file=sys.stderr)  # end the prompt's line
            return
        except (shmm.Interrupted, shmm.PeerGone):
            print(file=sys.stderr)  # so that what is said next starts a line
            raise
        yield line.encode(sys.stdin.encoding, "surrogateescape")


@contextlib.contextmanager
def stdout_on_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the length of the block."""
    # input() edits with readline only when fd 1 is a terminal, and draws the
    # prompt there. Lending it stderr keeps stdout free of prompts, and also
    # lets readline lift the terminal's own limit of 4095 bytes a line.
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# --- 5. The whole run ------------------------------------------------------------


def send(args: argparse.Namespace) -> int:
    """Find processa, attach, send stdin, detach."""
    key = shmm.key_from_arguments(args)
    log.info("ftok(%r, %#x) gave key %s", args.path, args.proj_id, show_key(key))
    if args.seed_protocol:
        return send_tutorial_protocol(key, args)
    notify_fd, ack_fd = wait_for_processa(key, args, lambda: shmm.connect_writer(key),
                                          shmm.fifo_paths(key)[0])

    with shmm.Cleanup() as cleanup:
        cleanup.callback(os.close, notify_fd)
        cleanup.callback(os.close, ack_fd)
        with shmm.signals_deferred():
            segment = cleanup.enter_context(find_segment(key, args))
            memory = segment.attach()
        log.info("shmat mapped shmid %d at %#x", segment.shmid, segment.address)
        take_writer_lock(notify_fd, memory, key)
        slots, slot_size, _ = shmm.read_header(memory)
        writer = shmm.Writer(memory, slots, slot_size, notify_fd, ack_fd)
        with stop_when_processa_leaves(ack_fd):
            send_input(writer, args.raw)
        log.info("sent %d messages; processa has taken them all", writer.messages)
    return ExitCode.OK


# --- 6. The tutorial's protocol ----------------------------------------------------
#
# With --seed-protocol we speak to the tutorial's a.cc (see shmm.py): each
# line, newline kept, goes into the segment as a C string, announced by one
# byte on ./myfifo. Like fgets(3) into a 4096-byte buffer, a longer line
# goes as several strings of at most 4095 bytes. Nothing tells us when the
# reader has printed one, so piped input outruns it and messages are lost.


def send_tutorial_protocol(key: int, args: argparse.Namespace) -> int:
    """Send each line of stdin as the tutorial's b.cc does."""
    fifo_fd = wait_for_processa(key, args, open_tutorial_fifo, f"./{comm.SEED_FIFO}")
    with shmm.Cleanup() as cleanup:
        cleanup.callback(os.close, fifo_fd)
        with shmm.signals_deferred():
            segment = cleanup.enter_context(find_segment(key, args))
            memory = segment.attach()
        log.info("shmat mapped shmid %d at %#x", segment.shmid, segment.address)
        with stop_when_processa_leaves(fifo_fd):
            for line in lines_with_newlines():
                for start in range(0, len(line), len(memory) - 1):
                    shmm.write_c_string(memory, line[start:start + len(memory) - 1])
                    announce(fifo_fd)
    return ExitCode.OK


def lines_with_newlines() -> Iterator[bytes]:
    """Yield stdin's lines as fgets(3) gives them: each with its newline."""
    if sys.stdin.isatty():
        return (line + b"\n" for line in terminal_lines())
    return iter(sys.stdin.buffer.readline, b"")


def announce(fifo_fd: int) -> None:
    """Write the tutorial's one byte per message."""
    try:
        os.write(fifo_fd, b"c")
    except BrokenPipeError:
        raise shmm.PeerGone("the reader has gone away (./myfifo has no reader)") from None


def open_tutorial_fifo() -> int:
    """Open ./myfifo for writing if a reader has it open; ENXIO or ENOENT if not."""
    fifo_fd = os.open(comm.SEED_FIFO, os.O_WRONLY | os.O_NONBLOCK)
    os.set_blocking(fifo_fd, True)
    return fifo_fd


def main(argv: list[str] | None = None) -> int:
    """Run processb; return its exit status."""
    args = parse_arguments(argv)
    shmm.configure_logging(args.verbose - args.quiet)
    return shmm.run("processb", lambda: send(args))


if __name__ == "__main__":
    sys.exit(main())
