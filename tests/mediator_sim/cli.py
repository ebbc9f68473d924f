"""The command line: ``serve`` runs a stand-in until SIGTERM or SIGINT; ``ask`` sends one request."""

import argparse
import signal
import sys
import threading

from mediator_sim import protocol
from mediator_sim.server import DEFAULT_BACKLOG, MODES, Mediator

# `ask`'s exit status when no answer came (0 and 1 are the answer's status).
NO_ANSWER = 3


def _command(word):
    if word in protocol.COMMANDS:
        return protocol.COMMANDS[word]
    try:
        return int(word, 0), None
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r: expected %s or a number" % (word, ", ".join(sorted(protocol.COMMANDS))))


def _parser():
    parser = argparse.ArgumentParser(prog="python3 -m mediator_sim",
                                     description="A stand-in for the GPU mediator's admin socket.")
    sub = parser.add_subparsers(dest="action")
    sub.required = True

    serve = sub.add_parser("serve", help="serve an admin socket until SIGTERM or SIGINT")
    serve.add_argument("--socket", required=True, help="the admin socket to create")
    serve.add_argument("--db", required=True, help="the registry database the mediator reads")
    serve.add_argument("--mode", choices=MODES, default="normal")
    serve.add_argument("--delay", type=float, default=1.0,
                       help="seconds the slow mode waits before each answer (default 1)")
    serve.add_argument("--record", help="append one JSON line per event to this file")
    serve.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG,
                       help="listen queue length (default %d)" % DEFAULT_BACKLOG)
    serve.add_argument("--create-db", action="store_true",
                       help="create the database and the mediator's tables when missing, "
                            "as the mediator does at start")

    ask = sub.add_parser("ask", help="send one request and print the answer's text")
    ask.add_argument("--socket", required=True)
    ask.add_argument("--timeout", type=float, default=5.0)
    ask.add_argument("command", type=_command,
                     help="%s, or a command code" % ", ".join(sorted(protocol.COMMANDS)))
    ask.add_argument("param1", nargs="?", type=lambda w: int(w, 0))
    ask.add_argument("param2", nargs="?", type=lambda w: int(w, 0), default=0)
    return parser


def _serve(args):
    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    mediator = Mediator(args.socket, args.db, mode=args.mode, delay=args.delay, record=args.record,
                        backlog=args.backlog, create_db=args.create_db)
    with mediator:
        sys.stdout.write("LISTENING %s\n" % mediator.socket_path)
        sys.stdout.flush()
        while not done.wait(0.2):
            pass
    return 0


def _ask(args):
    command, default_param1 = args.command
    param1 = args.param1 if args.param1 is not None else (default_param1 or 0)
    try:
        status, text = protocol.ask(args.socket, command, param1, args.param2, args.timeout)
    except protocol.Dropped:
        sys.stderr.write("the mediator closed the connection without answering\n")
        return NO_ANSWER
    except protocol.BadAnswer as e:
        sys.stderr.write("not an answer: %s\n" % e)
        return NO_ANSWER
    except OSError as e:
        sys.stderr.write("cannot ask %s: %s\n" % (args.socket, e))
        return NO_ANSWER
    sys.stdout.write(text)
    return 0 if status == protocol.STATUS_OK else 1


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.action == "serve":
        return _serve(args)
    return _ask(args)
