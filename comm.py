"""comm.py - what processa and processb agree on before either of them starts.

Two processes that share memory through System V IPC never exchange a
handle: each derives the same key from the same file and project id, and
finds the segment through it. So the values below are the contract between
them. Each can be overridden on the command line (see `--help` of either
program), but then both sides must be given the same value.

Read next: shmm.py, which uses these values to make the key, the segment and
the FIFOs; then processa.py (the reader) and processb.py (the writer).
"""
from __future__ import annotations

import enum
import os

# --- 1. The key: ftok(3) ---------------------------------------------------
#
# ftok(3) turns an existing file and a small number into a key_t. glibc builds
# it from three fields (see ftok_formula in shmm.py):
#
#     key = (proj_id & 0xff) << 24 | (st_dev & 0xff) << 16 | (st_ino & 0xffff)
#
# Only the low 8 bits of the project id count, so the tutorial's 0x1246 gives
# the same key as 0x46, and 0x100 would give the same key as 0 (refused).

FTOK_PATH = os.path.dirname(os.path.abspath(__file__))  # this checkout, wherever it is
PROJ_ID = 0x1246                                          # the tutorial's; ftok keeps 0x46

# --- 2. The segment: shmget(2) ---------------------------------------------

SEGMENT_SIZE = 4096   # bytes: one page; the kernel rounds a segment up to whole pages
SEGMENT_MODE = 0o600  # rw for our own user only. The tutorial's 0o666 lets every
                      # local user read and write the messages (see README.md).
SLOTS = 1             # message slots in the segment: 1 is the tutorial's lock-step
MAX_LINE = 1 << 20    # bytes: the longest line text mode carries. processa holds a
                      # line whole before it prints it (never part of one), so this
                      # bounds its memory; 1 MiB is far beyond what people type or
                      # logs hold. Longer lines, or binary data: --raw.

# --- 3. The FIFOs: fifo(7) --------------------------------------------------
#
# The segment carries the bytes and counts them; two FIFOs carry the rest:
# the handshake, the writer's lock and the news that a side has gone (see
# shmm.py section 10). processa makes them in a directory only its own user
# can write, named after the key, so processb finds them from the key alone,
# whatever its current directory.
# The directory depends on the uid alone, not on $XDG_RUNTIME_DIR, which
# differs between shells of one user (su, sudo, ssh, cron).

FIFO_DIR = "/tmp/shmm-{uid}"    # made with mode 0700; refused if it is not ours
FIFO_DIR_VARIABLE = "SHMM_FIFO_DIR"  # names another directory, for both programs alike:
                                     # the way out when someone else made ours first
NOTIFY_FIFO = "{key}.notify"    # writer -> reader: its hello, its flock, its hang-up
ACK_FIFO = "{key}.ack"          # held by the reader: its hang-up tells the writer
FIFO_MODE = 0o600               # the FIFOs are as private as their directory


# The tutorial's own protocol (--seed-protocol), spoken by its a.cc and b.cc:
SEED_FIFO = "myfifo"            # in the current directory, as the tutorial has it
SEED_FIFO_MODE = 0o664          # the tutorial's MODE (the umask still applies)


# --- 4. Exit codes ------------------------------------------------------------


class ExitCode(enum.IntEnum):
    """How processa, processb and shmm.py end; README.md lists the same table."""

    OK = 0                 # finished; everything this process made is removed
    FAILURE = 1            # a system call failed (not as below), the FIFO directory
                           # is not private, or stdin (processb) or stdout (processa)
                           # is closed or fails; shmm.py: no segment has that shmid
    USAGE = 2              # bad command line or ftok path (argparse uses 2 too), or
                           # input that text mode cannot carry (use --raw); a TEXT
                           # too long for the segment (shmm.py write)
    SEGMENT_CONFLICT = 3   # the segment at our key is in use, not ours, or does not
                           # fit; processa's FIFOs are in use by a live processa; or
                           # processb's --raw differs from processa's; shmm.py create
                           # at a key that has a segment (EEXIST), or shmm.py write
                           # into a processa's segment
    PERMISSION_DENIED = 4  # the segment's mode does not let this user use it (or, for
                           # processb --seed-protocol, the reader's /proc/PID/fd is not ours;
                           # for shmm.py chmod, the segment is not ours: EPERM)
    NO_READER = 5          # processb: no processa came up within --wait seconds
    WRITER_BUSY = 6        # processb: another processb has this processa
    PEER_GONE = 7          # the other process went away in mid-conversation
    CORRUPT = 8            # processa: a frame or record header failed its checks, a
                           # line went beyond MAX_LINE, or the stream ended mid-line
    SIGNALLED = 128        # plus the signal: 130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT,
                           # 138 SIGUSR1, 140 SIGUSR2, 142 SIGALRM.
                           # Not exited with: after cleaning up, the process dies by the
                           # signal itself, and the shell shows 128 + N in $? all the same.
