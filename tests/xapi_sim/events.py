"""xapi's event stream (``event.from`` / ``event.inject``) over the simulator's state.

Rather than hooking every mutation, the tracker compares the records it last saw with the current
ones: a record that appeared is an ``add``, one whose content changed a ``mod``, one that vanished
a ``del``. Each of those gets the next generation number; a token is that number, zero-padded as
xapi's tokens are. The core syncs after every call once a client has used the event API, so an
object that lives between two ``event.from`` calls still produces its events.
"""

import json
import time

TOKEN_WIDTH = 20


def format_token(gen):
    return "%0*d" % (TOKEN_WIDTH, gen)


def parse_token(token):
    """A token -> its generation; "" is the beginning. ``None`` when it is not a token."""
    if token == "":
        return 0
    head = token.split(",", 1)[0]
    if not head.isdigit():
        return None
    return int(head)


class EventTracker(object):
    def __init__(self):
        self.gen = 0
        self.active = False
        # (class, ref) -> {"gen" (last change), "created", "ts", "json", "snapshot", "deleted"}
        self._seen = {}

    def sync(self, current):
        """``current``: {(class, ref): record} of every tracked object now."""
        for key, rec in current.items():
            text = json.dumps(rec, sort_keys=True, default=str)
            old = self._seen.get(key)
            if old is not None and not old["deleted"] and old["json"] == text:
                continue
            self.gen += 1
            created = self.gen if old is None or old["deleted"] else old["created"]
            self._seen[key] = {
                "gen": self.gen, "created": created, "ts": time.time(), "json": text, "snapshot": rec,
                "deleted": False,
            }
        for key, old in self._seen.items():
            if key not in current and not old["deleted"]:
                self.gen += 1
                old.update(gen=self.gen, deleted=True, ts=time.time())

    def touch(self, key):
        """``event.inject``: a ``mod`` event for one known object."""
        entry = self._seen.get(key)
        if entry is None or entry["deleted"]:
            return False
        self.gen += 1
        entry.update(gen=self.gen, ts=time.time())
        return True

    def since(self, classes, gen):
        """Events of ``classes`` (lower case; ``"*"`` = all) newer than ``gen``, oldest first."""
        wanted = set(classes)
        out = []
        for (cls, ref), e in self._seen.items():
            if e["gen"] <= gen or not ("*" in wanted or cls in wanted):
                continue
            out.append({
                "id": str(e["gen"]),
                "timestamp": "%.6f" % e["ts"],
                "class": cls,
                # Seen from the token: created since -> add (even if changed since), else mod.
                "operation": "del" if e["deleted"] else "add" if e["created"] > gen else "mod",
                "ref": ref,
                "snapshot": e["snapshot"],
            })
        out.sort(key=lambda ev: int(ev["id"]))
        return out
