"""processa.py - the reader: creates the segment and prints what processb sends.

Start it first, in one terminal, then processb.py in a second one; type lines
into the second and watch them arrive here. A third terminal can watch the
segment with `make watch` (ipcs -m once a second).

    terminal 1: make run-a                         terminal 2: make run-b
    [Info][...]::ftok('/home/you/shm', 0x1246) gave key 0x46010004
    [Info][...]::shmget created shmid 3: 4096 bytes, mode 0600
    [Info][...]::shmat mapped shmid 3 at 0x7f3d9420f000
    [Info][...]::IPC_STAT: size 4096, nattch 1, key 0x46010004, mode 0600
    [Info][...]::waiting for processb on /tmp/shmm-1000/0x46010004.notify
                                                   Please enter: hello
    Message received: hello
                                                   Please enter: 你好，共享内存
    Message received: 你好，共享内存
                                                   Please enter: ^D
    [Info][...]::processb (pid 4242) closed the channel after 2 messages
    [Info][...]::removed /tmp/shmm-1000/0x46010004.ack
    [Info][...]::removed /tmp/shmm-1000/0x46010004.notify
    [Info][...]::removed shmid 3 (IPC_RMID)
    [Info][...]::detached from shmid 3 (shmdt)

In order, it: derives the key with ftok(3); creates the segment exclusively
with shmget(2) (removing one that a crashed processa left behind); attaches
it with shmat(2) and writes the header, with its two counts (sem_init(3));
makes the two FIFOs; waits for
processb; prints each message as it arrives, a frame of lines at a time;
and, when processb has sent its END frame and closed, or a signal comes,
closes and removes the FIFOs (if still its own), removes the segment with
shmctl(2) IPC_RMID and detaches with shmdt(2). Without an END frame it says
that the output may be incomplete, and exits 7.

Messages go to stdout, one line each, as soon as they arrive; with --raw,
the bytes processb streams are written to stdout exactly as sent. Logs go
to stderr. Exit status: 0 when processb closed the channel, others as
listed in comm.py and README.md. Signal N (Ctrl-C, Ctrl-backslash, kill, a closed terminal)
makes it clean up and then die by that signal, so that a script or loop
around it stops too; the shell shows 128 + N (130 for Ctrl-C).

Companion: processb.py (the writer). Library: shmm.py. Constants: comm.py.
Man pages: ftok(3), shmget(2), shmat(2), shmdt(2), shmctl(2), fifo(7),
sem_overview(7).
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import sys

import comm
import shmm
from comm import ExitCode

log = logging.getLogger("processa")


# --- 1. The story ------------------------------------------------------------------


def serve(args: argparse.Namespace, closed: list[str]) -> int:
    """The whole story: make the key, create and attach the segment, serve
    processb, clean up. Each step is a function below, or in shmm.py."""
    check_stdout(closed)
    key = shmm.key_from_arguments(args)  # ftok(3)
    log.info("ftok(%r, %#x) gave key %s", args.path, args.proj_id, shmm.show_key(key))
    with shmm.Cleanup() as cleanup:  # undoes each step, in reverse, on every way out
        memory = create_and_attach(cleanup, key, args)  # shmget(2), shmat(2)
        if args.seed_protocol:
            serve_tutorial_protocol(cleanup, memory)
        else:
            serve_messages(cleanup, key, memory, args)
    return ExitCode.OK


def check_stdout(closed: list[str]) -> None:
    """Refuse to start without somewhere to print."""
    if "stdout" in closed:
        raise shmm.Refused(ExitCode.FAILURE, "stdout is closed (>&-): there is nowhere to print"
                           " the messages; give processa an open stdout, such as > messages.txt")


def create_and_attach(cleanup: shmm.Cleanup, key: int, args: argparse.Namespace) -> memoryview:
    """Create the segment and map it, registered for removal on every way out."""
    # Signals are held while the segment is made and attached, so that it is
    # registered for removal before Ctrl-C can stop us.
    with shmm.signals_deferred():
        segment = cleanup.enter_context(shmm.create_segment(key, args.size, args.mode))
        memory = segment.attach()
    log.info("shmget created shmid %d: %d bytes, mode %04o", segment.shmid, args.size, args.mode)
    log.info("shmat mapped shmid %d at %#x", segment.shmid, segment.address)
    log_status(segment)
    return memory


def serve_messages(cleanup: shmm.Cleanup, key: int, memory: memoryview,
                   args: argparse.Namespace) -> None:
    """Lay out the slots, wait for processb, print what arrives until it ends."""
    slot_size = shmm.write_header(memory, args.slots, shmm.BYTES if args.raw else shmm.LINES)
    shmm.init_counts(memory, args.slots)  # sem_init(3): no slot full, every slot free
    notify_fd = shmm.accept_writer(cleanup, key, memory)  # the FIFOs
    printer = BytePrinter() if args.raw else LinePrinter()
    reader = shmm.Reader(memory, args.slots, slot_size, notify_fd)
    ended = reader.receive(printer.copy_out, printer.write_copied)  # until END, or a hang-up
    shmm.destroy_counts(memory)  # the writer has hung up: nobody can wait on them now
    writer = f"processb (pid {shmm.read_header(memory).writer_pid})"
    if not ended:
        unprinted = "; the part of a line received was not printed" if printer.parts else ""
        raise shmm.PeerGone(f"{writer} went away before the end of its stream, after"
                            f" {printer.describe()}: the output may be incomplete{unprinted}")
    if printer.parts:
        raise shmm.CorruptFrame(f"{writer} ended its stream in the middle of a line")
    log.info("%s closed the channel after %s", writer, printer.describe())


# --- 2. Printing what arrives ------------------------------------------------------


PREFIX = b"Message received: "
IOV_MAX = 1024  # buffers one writev(2) takes at most (<limits.h>)


class Printer:
    """What arrives, copied out of the segment during the frame and written
    to stdout once the slots are handed back, so that processb fills them
    again meanwhile; all of it with one writev(2)."""

    def __init__(self) -> None:
        self.count = 0                                 # messages (lines) or bytes so far
        self.copied: list[tuple[bytes, int]] = []      # (piece, more), not yet written
        self.parts: list[bytes] = []                   # the pieces of a line still arriving

    def copy_out(self, piece: memoryview, more: int) -> None:
        """Copy a record out of its slot, which is handed back next."""
        self.copied.append((bytes(piece), more))

    def write_copied(self) -> None:
        """Write what was copied out to stdout, as format() makes it."""
        write_all([self.format(piece, more) for piece, more in self.copied])
        self.copied.clear()

    def format(self, piece: bytes, more: int) -> bytes:
        """Return what a record becomes on stdout (LinePrinter, BytePrinter)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Say how much arrived (LinePrinter, BytePrinter)."""
        raise NotImplementedError


class LinePrinter(Printer):
    """Print each line that arrives as `Message received: LINE`. A record
    holds whole lines, so the prefix goes in with one replace(), at C speed;
    the pieces of a long line (flagged MORE) are held until its last one
    comes, up to comm.MAX_LINE bytes, so that no part of a line is printed
    as if it were whole."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0  # bytes in parts

    def format(self, text: bytes, more: int) -> bytes:
        """Return a record's lines as they are printed (nothing while a line goes on)."""
        if more or self.parts:
            # The long line is all of each piece flagged MORE, and of the last
            # piece what comes before its first newline (whole lines follow).
            newline = text.find(b"\n")
            end = len(text) if more or newline < 0 else newline
            if self.held + end > comm.MAX_LINE:
                raise shmm.CorruptFrame(f"processb sent a line longer than {comm.MAX_LINE}"
                                        " bytes, the most text mode carries")
            self.parts.append(text)
            self.held += len(text)
            if more:
                return b""
            text = b"".join(self.parts)
            self.parts.clear()
            self.held = 0
        if text.endswith(b"\n"):
            text = text[:-1]
        self.count += text.count(b"\n") + 1
        return b"".join((PREFIX, text.replace(b"\n", b"\n" + PREFIX), b"\n"))

    def describe(self) -> str:
        """Say how much arrived."""
        return shmm.counted(self.count, "message")


class BytePrinter(Printer):
    """Write the bytes that arrive to stdout as they are (--raw)."""

    def format(self, piece: bytes, _more: int) -> bytes:
        """Return the bytes as they are written."""
        self.count += len(piece)
        return piece

    def describe(self) -> str:
        """Say how much arrived."""
        return shmm.counted(self.count, "byte")


def write_all(buffers: list[bytes]) -> None:
    """Write every buffer to stdout, however many writev(2) calls it takes, and
    waiting when stdout is non-blocking and full."""
    views = [memoryview(buffer) for buffer in buffers if buffer]
    while views:
        try:
            written = os.writev(1, views[:IOV_MAX])
        except BlockingIOError:  # EAGAIN: stdout is non-blocking and its reader is behind
            select.select([], [1], [])
            continue
        except BrokenPipeError:
            raise shmm.Refused(ExitCode.FAILURE, "stdout was closed (EPIPE): nobody reads"
                               " the messages any more") from None
        except OSError as err:
            raise shmm.Refused(ExitCode.FAILURE,
                               f"writing to stdout: {shmm.describe_errno(err)}") from None
        while written and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def log_status(segment: shmm.Segment) -> None:
    """Log what the kernel says about the segment, as the tutorial printed it."""
    status = segment.status()
    # The tutorial printed mode as 438: that is 0666 in decimal.
    log.info("IPC_STAT: size %d, nattch %d, key %s, mode %04o", status.shm_segsz,
             status.shm_nattch, shmm.show_key(status.shm_perm.key), status.shm_perm.mode & 0o777)


# --- 3. The tutorial's protocol (--seed-protocol) ------------------------------------


def serve_tutorial_protocol(cleanup: shmm.Cleanup, memory: memoryview) -> None:
    """Speak the tutorial's protocol (shmm.py section 8): print the C string at
    offset 0 each time a byte arrives on ./myfifo."""
    with shmm.signals_deferred():
        if shmm.has_reader(comm.SEED_FIFO):
            raise shmm.Refused(ExitCode.SEGMENT_CONFLICT, f"./{comm.SEED_FIFO} is in use:"
                               " another reader has it open; stop it first")
        try:
            made = shmm.make_fifo(comm.SEED_FIFO, comm.SEED_FIFO_MODE)
        except OSError as err:
            raise shmm.Refused(ExitCode.FAILURE, f"{shmm.describe(err)}: processa"
                               f" --seed-protocol makes ./{comm.SEED_FIFO} in the current"
                               " directory, as the tutorial's a.cc does; run it from a directory"
                               " you can write") from None
        cleanup.callback(shmm.unlink_if_ours, comm.SEED_FIFO, made)
    # O_NONBLOCK: open at once instead of waiting in open(2) for a writer, as
    # a.cc does, so that from now on we hold the FIFO (processb checks that
    # the creator of the segment is the one who reads it).
    fifo_fd = opened(cleanup, comm.SEED_FIFO, os.O_RDONLY | os.O_NONBLOCK)
    log.info("waiting for a writer on ./%s (the tutorial's protocol)", comm.SEED_FIFO)
    waiter = select.poll()
    waiter.register(fifo_fd, select.POLLIN)  # a byte, or the writer's hang-up
    messages = 0
    while waiter.poll():
        try:
            byte = os.read(fifo_fd, 1)
        except BlockingIOError:  # a new writer came just after the last one left
            continue
        if not byte and messages:
            break  # end of file: the writer closed ./myfifo
        if not byte:
            # A writer that sends nothing (a processb that refused this
            # reader, one that checks whether we listen) is not the end.
            log.info("a writer opened ./%s and closed it without sending; still waiting",
                     comm.SEED_FIFO)
            reopen(fifo_fd, comm.SEED_FIFO, made)
            continue
        write_all([PREFIX + shmm.read_c_string(memory)])  # the string keeps its newline
        messages += 1
    log.info("the writer closed ./%s after %s", comm.SEED_FIFO, shmm.counted(messages, "message"))


def reopen(fd: int, path: str, made: tuple[int, int]) -> None:
    """Open the FIFO at path afresh onto fd, which then reports no hang-up until
    a new writer has come and gone; refuse if it is no longer the one we made."""
    fresh = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    info = os.fstat(fresh)
    if (info.st_dev, info.st_ino) != made:
        os.close(fresh)
        raise shmm.Refused(ExitCode.FAILURE, f"./{path} was replaced while processa waited (by"
                           " hand?); start processa again")
    os.dup2(fresh, fd)
    os.close(fresh)


def opened(cleanup: shmm.Cleanup, path: str, flags: int) -> int:
    """Open path, and close it when the cleanup unwinds."""
    fd = os.open(path, flags)
    cleanup.callback(os.close, fd)
    return fd


# --- 4. The command line ----------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; --help prints this module's docstring."""
    parser = argparse.ArgumentParser(prog="processa.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shmm.add_channel_options(parser)
    parser.add_argument("--slots", type=shmm.int_argument, default=comm.SLOTS, metavar="N",
                        help="message slots in the segment (default: %(default)s, lock-step)")
    parser.set_defaults(size=None)  # the default depends on --slots: below
    args = parser.parse_args(argv)
    if not 1 <= args.slots <= shmm.MAX_SLOTS:
        parser.error(f"--slots {args.slots}: choose 1 to {shmm.MAX_SLOTS}")
    if args.mode & 0o600 != 0o600:
        parser.error(f"--mode {args.mode:04o} would lock processa out of its own segment:"
                     " give its owner read and write (0600 or more)")
    if args.seed_protocol and (args.raw or args.slots != 1):
        parser.error("--seed-protocol sends lines through one string: no --raw, no --slots")
    if args.size is None:
        # Each slot as large as the one of the default segment: --slots 16
        # alone cutting one page into slots of 192 bytes would be a trap.
        try:
            args.size = shmm.size_argument(str(shmm.default_size(args.slots)))
        except argparse.ArgumentTypeError as err:
            parser.error(f"--slots {args.slots} with the default slot size needs {err};"
                         " give fewer slots, or a --size")
    if args.size < shmm.segment_size(args.slots):
        parser.error(f"--size {args.size} is too small for {args.slots} slot(s): the headers"
                     f" need at least {shmm.segment_size(args.slots)} bytes")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run processa; return its exit status."""
    shmm.end_quietly_on_signals()
    closed = shmm.reopen_closed_standard_streams()
    args = parse_arguments(argv)
    shmm.configure_logging(args.verbose - args.quiet)
    return shmm.run("processa", lambda: serve(args, closed))


if __name__ == "__main__":
    sys.exit(main())
