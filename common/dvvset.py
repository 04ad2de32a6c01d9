"""Causality: dotted version vector sets (DVV sets) and the client context.

A stored object is a DVV set (Almeida et al. 2014; the semantics of Riak's
``dvvset.erl``, reimplemented here). For every actor (a node incarnation such as
``"n1.3"``) an entry ``(actor, counter, values)`` says: this replica has seen the
actor's events ``1..counter``, and ``values`` (newest first) are the siblings
created by the actor's latest ``len(values)`` events, i.e. ``values[i]`` carries
the dot ``(actor, counter - i)``. Keeping the dot of every sibling is what lets
a put drop exactly the siblings its context covers and nothing else, so two
writes from the same context never silently replace one another.

Clients only ever see ``join(clock)``, a plain version vector, encoded as an
opaque string by ``encode_context``. Everything that arrives from outside goes
through ``decode_context``, ``from_wire`` or ``decode``, which validate fully and
raise ``InvalidContext`` / ``InvalidClock`` (both ``ValueError``) on bad input.

Limits (explicit, checked on every decode):
- actors are non-empty strings of at most ``MAX_ACTOR_CHARS`` characters;
- counters and ``written_at`` are integers in ``0..MAX_INT`` (2**63 - 1);
  clock counters are at least 1 (an entry with counter 0 carries no history);
- an encoded context is at most ``max_bytes`` characters (default 16 KiB).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import cbor2

MAX_INT = 2**63 - 1
# A node id (<= 64) and its incarnation; a fallback's actor adds a hint generation and the
# primary's id (<= 64): "n1.3.h2.n4". With room to spare.
MAX_ACTOR_CHARS = 192
DIGEST_BYTES = 16
_MAX_CBOR_DEPTH = 8  # the clock wire form nests 5 deep, a context 2 deep
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

VersionVector = dict[str, int]


class InvalidContext(ValueError):
    """A client context string that is not one ``encode_context`` could have produced."""


class InvalidClock(ValueError):
    """A DVV set (wire or storage form) that breaks the structure's invariants."""


@dataclass(frozen=True, slots=True)
class Sibling:
    """One concurrent value; ``value is None`` is a tombstone left by a delete.

    ``expires_at`` (ms since the Unix epoch) is stamped once, by the coordinator of the
    write, and replicated with the value: every replica holds the same expiry, only the
    clock that reads it varies. A tombstone never carries one.
    """

    value: bytes | None
    written_at: int  # ms since the Unix epoch, stamped by the coordinator
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class DVVSet:
    """Causal history plus the siblings it has not superseded.

    ``entries`` is sorted by actor, one ``(actor, counter, values newest first)`` per
    actor. ``anonymous`` holds values without a dot; only a client clock built by
    ``new`` has one, and ``update`` turns it into a dotted sibling. It is kept in a
    canonical (sorted, duplicate-free) order so that ``==`` is structural equality.
    """

    entries: tuple[tuple[str, int, tuple[Sibling, ...]], ...] = ()
    anonymous: tuple[Sibling, ...] = ()


_EMPTY = DVVSet()


def empty() -> DVVSet:
    """The clock of a key nobody has written."""
    return _EMPTY


def new(value: Sibling, context: VersionVector | None = None) -> DVVSet:
    """A client clock: the history the client has read (``context``) and its new value.

    Zero counters in the context carry no history and are dropped.
    """
    entries = tuple((actor, counter, ()) for actor, counter in sorted((context or {}).items())
                    if counter > 0)
    return DVVSet(entries, (value,))


def _merge_entry(actor: str, counter_a: int, values_a: tuple[Sibling, ...],
                 counter_b: int, values_b: tuple[Sibling, ...]
                 ) -> tuple[str, int, tuple[Sibling, ...]]:
    """Merge one actor's entry: keep the dots that both sides still have or only one has seen."""
    if counter_a < counter_b:
        counter_a, values_a, counter_b, values_b = counter_b, values_b, counter_a, values_a
    # Now counter_a >= counter_b: every dot of side b is within side a's history, so a
    # dot survives iff side a still holds it and side b either holds it or never saw it.
    oldest_kept_a = counter_a - len(values_a)
    oldest_kept_b = counter_b - len(values_b)
    if oldest_kept_a >= oldest_kept_b:
        return (actor, counter_a, values_a)
    return (actor, counter_a, values_a[:counter_a - oldest_kept_b])


def _sync_entries(a: tuple[tuple[str, int, tuple[Sibling, ...]], ...],
                  b: tuple[tuple[str, int, tuple[Sibling, ...]], ...]
                  ) -> tuple[tuple[str, int, tuple[Sibling, ...]], ...]:
    """Merge two actor-sorted entry tuples in one pass."""
    if not a:
        return b
    if not b:
        return a
    merged = []
    i = j = 0
    while i < len(a) and j < len(b):
        actor_a, actor_b = a[i][0], b[j][0]
        if actor_a < actor_b:
            merged.append(a[i])
            i += 1
        elif actor_b < actor_a:
            merged.append(b[j])
            j += 1
        else:
            merged.append(_merge_entry(actor_a, a[i][1], a[i][2], b[j][1], b[j][2]))
            i += 1
            j += 1
    merged.extend(a[i:])
    merged.extend(b[j:])
    return tuple(merged)


def _sibling_order(sibling: Sibling) -> tuple[int, bool, bytes, int]:
    return (sibling.written_at, sibling.value is None, sibling.value or b"",
            -1 if sibling.expires_at is None else sibling.expires_at)


def _canonical_anonymous(siblings: Iterable[Sibling]) -> tuple[Sibling, ...]:
    return tuple(sorted(set(siblings), key=_sibling_order))


def _history_dominates(a: DVVSet, b: DVVSet) -> bool:
    """True if every event in b's history is in a's history (join(a) >= join(b))."""
    counters_a = {actor: counter for actor, counter, _ in a.entries}
    return all(counters_a.get(actor, 0) >= counter for actor, counter, _ in b.entries)


def sync(a: DVVSet, b: DVVSet) -> DVVSet:
    """Merge two replicas' clocks: union of histories, minus siblings either side superseded.

    Commutative, associative and idempotent for clocks without anonymous values
    (every stored clock). Anonymous values follow dvvset: the strictly older side's
    are dropped, otherwise both sides' are kept.
    """
    entries = _sync_entries(a.entries, b.entries)
    if not a.anonymous and not b.anonymous:
        return DVVSet(entries)
    a_le_b = _history_dominates(b, a)
    b_le_a = _history_dominates(a, b)
    if a_le_b and not b_le_a:
        anonymous = b.anonymous
    elif b_le_a and not a_le_b:
        anonymous = a.anonymous
    else:
        anonymous = _canonical_anonymous(a.anonymous + b.anonymous)
    return DVVSet(entries, anonymous)


def merge_all(clocks: Iterable[DVVSet]) -> DVVSet:
    """Fold ``sync`` over many replies (e.g. a get's R answers); ``empty()`` if none."""
    merged = _EMPTY
    for clock in clocks:
        merged = sync(merged, clock)
    return merged


def _add_event(entries: tuple[tuple[str, int, tuple[Sibling, ...]], ...], actor: str,
               value: Sibling, floor: int) -> tuple[tuple[str, int, tuple[Sibling, ...]], ...]:
    """Mint ``actor``'s next dot for ``value``, keeping entries sorted: one above the
    entry's counter while the entry holds values (their dots must stay contiguous below
    the new one), else one above ``max(counter, floor)``; ``update`` says why."""
    index = next((i for i, entry in enumerate(entries) if entry[0] >= actor), len(entries))
    counter: int = 0
    values: tuple[Sibling, ...] = ()
    if index < len(entries) and entries[index][0] == actor:
        _, counter, values = entries[index]
        rest = entries[index + 1:]
    else:
        rest = entries[index:]
    minted = counter + 1 if values else max(counter, floor) + 1
    if minted > MAX_INT:  # only a forged context gets there; no peer would take the clock
        raise InvalidContext(f"the counter of {actor!r} is at 2**63-1 (a forged context?): "
                             f"no new event fits")
    return entries[:index] + ((actor, minted, (value, *values)),) + rest


def update(client: DVVSet, stored: DVVSet | None, actor: str, floor: int = 0) -> DVVSet:
    """Coordinate a put at ``actor``: the result is causally newer than both clocks.

    ``client`` comes from ``new(value, context)``: its single anonymous value gets
    a new dot of ``actor``; the stored siblings that ``context`` covers are dropped,
    all others stay as siblings.

    The new dot never repeats one ``actor`` minted before for this key, whatever
    counters ``context`` names (stale or forged), given: ``actor`` is the coordinating
    replica's own and ``stored`` its copy (each of the actor's dots for the key is
    stored there first), and ``floor`` is at least the actor's counter in every copy
    this replica has reaped. The copy's history only grows, except by a reap, so
    every earlier dot of the actor for the key is at most the copy's counter or the
    counter of a copy of the key reaped here. The rule, on the actor's entry once
    ``stored`` and ``context`` are synced:

    - The entry holds no values (no entry, or the context covers them): the
      counter goes to ``max(counter, floor) + 1``, above both. The history then
      covers the actor's dots up to ``floor``; those of this key were superseded by
      a tombstone reaped here or are its tombstones, so no live value is dropped.
      (Counting on from a stale context's counter repeated a dot of a tombstone that
      another replica had not reaped yet.)
    - The entry holds values (only ``stored`` carries any, so they are the copy's):
      the counter goes to ``counter + 1``. A jump would misplace their dots (values
      are the newest, contiguous ones), and is not needed: a tombstone is reaped only
      once every copy of the key holds it, so no copy holds a value of the actor it
      superseded, and the actor's values on the copy were minted after that reap,
      above its counter. (``floor`` is per node: often above the counter of a key
      never reaped.)
    A copy that escapes that agreement and comes back after the reap breaks the
    second case, as it brings back the values the tombstone deleted.

    Raises ``InvalidContext`` if the new counter would pass 2**63-1 (forged counters).
    """
    if len(client.anonymous) != 1:
        raise ValueError("update() needs a client clock with exactly one new value, "
                         f"got {len(client.anonymous)}")
    synced = sync(DVVSet(client.entries), stored or _EMPTY)
    return DVVSet(_add_event(synced.entries, actor, client.anonymous[0], floor),
                  synced.anonymous)


def join(clock: DVVSet) -> VersionVector:
    """The causal context handed to clients: actor -> highest event seen."""
    return {actor: counter for actor, counter, _ in clock.entries}


def values(clock: DVVSet) -> list[Sibling]:
    """Every sibling, tombstones included: anonymous first, then by actor, newest first."""
    result = list(clock.anonymous)
    for _, _, entry_values in clock.entries:
        result.extend(entry_values)
    return result


def live_values(clock: DVVSet) -> list[Sibling]:
    """The siblings that are not tombstones, expired or not (what a write must keep)."""
    return [sibling for sibling in values(clock) if sibling.value is not None]


def is_visible(sibling: Sibling, now_ms: int) -> bool:
    """A reader at ``now_ms`` sees the sibling: not a tombstone and not yet expired."""
    return sibling.value is not None and (sibling.expires_at is None
                                          or sibling.expires_at > now_ms)


def visible_values(clock: DVVSet, now_ms: int) -> list[Sibling]:
    """The siblings a reader whose clock says ``now_ms`` sees: tombstones and expired
    values hidden. Monotone in ``now_ms``: a later reader never sees more."""
    return [sibling for sibling in values(clock) if is_visible(sibling, now_ms)]


def is_dead(clock: DVVSet, now_ms: int) -> bool:
    """True if the clock has siblings and none is visible at ``now_ms``: an expired value
    behaves exactly as a tombstone (a reap candidate once its grace has passed)."""
    siblings = values(clock)
    return bool(siblings) and not any(is_visible(sibling, now_ms) for sibling in siblings)


def sibling_count(clock: DVVSet) -> int:
    """Number of siblings including tombstones (what the sibling limit counts)."""
    return len(clock.anonymous) + sum(len(entry_values) for _, _, entry_values in clock.entries)


def is_tombstone(clock: DVVSet) -> bool:
    """True if the clock has siblings and all of them are tombstones: a reap candidate.

    A clock without any sibling is not a tombstone (there is nothing to reap).
    """
    siblings = values(clock)
    return bool(siblings) and all(sibling.value is None for sibling in siblings)


def descends(a: DVVSet, b: DVVSet) -> bool:
    """True if ``a`` has seen everything ``b`` has, so ``b`` needs no say (read repair).

    For clocks built by ``update``/``sync`` the siblings are a function of the
    history, so comparing histories is enough.
    """
    return _history_dominates(a, b)


def equal(a: DVVSet, b: DVVSet) -> bool:
    """Same causal history and the same siblings (clocks are kept canonical)."""
    return a == b


def _decode_cbor(data: bytes, error: type[ValueError], what: str) -> object:
    """Decode exactly one CBOR item; any failure of the decoder becomes ``error``."""
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(stream, max_depth=_MAX_CBOR_DEPTH).decode()
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise error(f"{what}: not valid CBOR ({exc})") from exc
    if stream.tell() != len(data):
        raise error(f"{what}: {len(data) - stream.tell()} trailing bytes after the CBOR item")
    return obj


def _check_int(value: object, what: str, error: type[ValueError], minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise error(f"{what} must be an integer in {minimum}..2**63-1, got {value!r:.40}")
    return value


def _check_actor(value: object, error: type[ValueError]) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ACTOR_CHARS:
        raise error(f"actor must be a non-empty string of at most {MAX_ACTOR_CHARS} "
                    f"characters, got {value!r:.40}")
    return value


def _check_list(value: object, what: str, error: type[ValueError],
                length: int | None = None) -> list | tuple:
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        shape = "a list" if length is None else f"a list of {length} items"
        raise error(f"{what} must be {shape}, got {value!r:.40}")
    return value


def encode_context(vv: VersionVector) -> str:
    """The opaque context string: base64url (unpadded) of canonical CBOR [[actor, n], ...]."""
    if not vv:
        return ""
    parts = [_head(_ARRAY, len(vv))]  # canonical CBOR [[actor, n], ...], as ``encode``
    for actor, counter in sorted(vv.items()):
        name = actor.encode()
        parts += (b"\x82", _head(_TEXT, len(name)), name, _int(counter))
    payload = b"".join(parts)
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def decode_context(s: object, max_bytes: int = 16384) -> VersionVector:
    """Parse a client context; ``""`` is the empty context (a blind write).

    Accepts at most ``max_bytes`` characters; counters are integers in 0..2**63-1,
    actors unique non-empty strings. Raises ``InvalidContext`` on anything else.
    """
    if not isinstance(s, str):
        raise InvalidContext(f"context must be a string, got {type(s).__name__}")
    if len(s) > max_bytes:
        raise InvalidContext(f"context is {len(s)} characters, the limit is {max_bytes}")
    if not s:
        return {}
    if not _BASE64URL.fullmatch(s) or len(s) % 4 == 1:
        raise InvalidContext("context is not unpadded base64url text")
    payload = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    pairs = _check_list(_decode_cbor(payload, InvalidContext, "context"), "context",
                        InvalidContext)
    vv: VersionVector = {}
    for pair in pairs:
        actor, counter = _check_list(pair, "context entry", InvalidContext, length=2)
        actor = _check_actor(actor, InvalidContext)
        if actor in vv:
            raise InvalidContext(f"context names actor {actor!r} twice")
        vv[actor] = _check_int(counter, f"context counter of {actor!r}", InvalidContext)
    return vv


def _sibling_to_wire(sibling: Sibling) -> list:
    if sibling.expires_at is None:
        return [sibling.value, sibling.written_at]
    return [sibling.value, sibling.written_at, sibling.expires_at]


def to_wire(clock: DVVSet) -> list:
    """CBOR-friendly form: [[[actor, counter, [sibling, ...]], ...], [anonymous sibling, ...]],
    a sibling ``[value|None, written_at]`` or ``[value, written_at, expires_at]`` (the
    2-item form is byte-identical to clocks written before expiry existed)."""
    return [
        [[actor, counter, [_sibling_to_wire(s) for s in entry_values]]
         for actor, counter, entry_values in clock.entries],
        [_sibling_to_wire(s) for s in clock.anonymous],
    ]


def _sibling_from_wire(obj: object) -> Sibling:
    fields = _check_list(obj, "sibling", InvalidClock)
    if len(fields) not in (2, 3):
        raise InvalidClock(f"sibling must be a list of 2 or 3 items, got {obj!r:.40}")
    value = fields[0]
    if value is not None and type(value) is not bytes:
        raise InvalidClock(f"sibling value must be bytes or None, got {type(value).__name__}")
    written_at = _check_int(fields[1], "written_at", InvalidClock)
    if len(fields) == 2:
        return Sibling(value, written_at)
    if value is None:
        raise InvalidClock("a tombstone carries no expires_at")
    expires_at = _check_int(fields[2], "expires_at", InvalidClock, minimum=written_at + 1)
    return Sibling(value, written_at, expires_at)


def from_wire(obj: object) -> DVVSet:
    """Validate and rebuild a clock from ``to_wire`` form (peer messages, storage).

    Checks the shape and types, that actors are strictly sorted (so unique), and that
    counters are 1..2**63-1 and at least the number of values they carry. No sibling
    count: that is the writer's limit (dynd's Replica.coordinate); a replica's copy may
    merge past it, and the frame that carried it already bounds its bytes.
    """
    entries_obj, anonymous_obj = _check_list(obj, "clock", InvalidClock, length=2)
    entries = []
    previous_actor: str | None = None
    for entry in _check_list(entries_obj, "clock entries", InvalidClock):
        actor, counter, values_obj = _check_list(entry, "clock entry", InvalidClock, length=3)
        actor = _check_actor(actor, InvalidClock)
        if previous_actor is not None and actor <= previous_actor:
            raise InvalidClock(f"clock actors must be sorted and unique: {actor!r} follows "
                               f"{previous_actor!r}")
        previous_actor = actor
        counter = _check_int(counter, f"counter of {actor!r}", InvalidClock, minimum=1)
        entry_values = tuple(_sibling_from_wire(s)
                             for s in _check_list(values_obj, "entry values", InvalidClock))
        if len(entry_values) > counter:
            raise InvalidClock(f"actor {actor!r} has {len(entry_values)} values but counter "
                               f"{counter}")
        entries.append((actor, counter, entry_values))
    anonymous = _canonical_anonymous(
        _sibling_from_wire(s) for s in _check_list(anonymous_obj, "anonymous values",
                                                   InvalidClock))
    return DVVSet(tuple(entries), anonymous)


def encode(clock: DVVSet) -> bytes:
    """Storage form: canonical CBOR of ``to_wire`` (also what ``digest`` hashes).

    Written out by hand: the clock holds only arrays, text, byte strings, ints and null,
    whose canonical encoding is their shortest head, and cbor2 spends about half a
    microsecond on each array it encodes (every read-modify-write encodes a clock on
    each replica). Byte for byte what ``cbor2.dumps(to_wire(clock), canonical=True)``
    gives (tests/unit/test_dvvset.py checks it on generated clocks).
    """
    parts = [b"\x82", _head(_ARRAY, len(clock.entries))]
    for actor, counter, entry_values in clock.entries:
        name = actor.encode()
        parts += (b"\x83", _head(_TEXT, len(name)), name, _int(counter),
                  _head(_ARRAY, len(entry_values)))
        for sibling in entry_values:
            _encode_sibling(parts, sibling)
    parts.append(_head(_ARRAY, len(clock.anonymous)))
    for sibling in clock.anonymous:
        _encode_sibling(parts, sibling)
    return b"".join(parts)


_UINT, _NEGINT, _BYTES, _TEXT, _ARRAY = 0, 1, 2, 3, 4
_NULL = b"\xf6"
_SHORT_HEADS = tuple(tuple(bytes((major << 5 | n,)) for n in range(24)) for major in range(5))


def _head(major: int, n: int) -> bytes:
    """The shortest CBOR head of ``major`` with argument ``n`` (0 <= n < 2**64)."""
    if n < 24:
        return _SHORT_HEADS[major][n]
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")


def _int(n: int) -> bytes:
    return _head(_UINT, n) if n >= 0 else _head(_NEGINT, -1 - n)


def _encode_sibling(parts: list[bytes], sibling: Sibling) -> None:
    value = sibling.value
    expires_at = sibling.expires_at
    parts.append(b"\x82" if expires_at is None else b"\x83")
    if value is None:
        parts.append(_NULL)
    else:
        parts += (_head(_BYTES, len(value)), value)
    parts.append(_int(sibling.written_at))
    if expires_at is not None:
        parts.append(_int(expires_at))


def decode(data: object) -> DVVSet:
    """Parse the storage form (also what peers send), validating it as strictly as
    ``from_wire``."""
    if not isinstance(data, bytes):
        raise InvalidClock(f"clock data must be bytes, got {type(data).__name__}")
    return from_wire(_decode_cbor(data, InvalidClock, "clock"))


def decode_stored(data: bytes) -> DVVSet:
    """Parse a clock this node stored itself (``encode`` wrote it, RocksDB checksums it):
    the shape is trusted, so none of ``decode``'s per-field checks, which cost more than
    the parse on every read and read-modify-write. A malformed copy still fails, as
    InvalidClock. Bytes from a peer go through ``decode``."""
    try:
        entries, anonymous = cbor2.loads(data)
        return DVVSet(
            tuple((actor, counter, tuple(Sibling(*fields) for fields in values))
                  for actor, counter, values in entries),
            tuple(Sibling(*fields) for fields in anonymous))
    except (cbor2.CBORDecodeError, TypeError, ValueError) as exc:
        raise InvalidClock(f"stored clock: {exc}") from exc


def stored_visible(data: bytes, now_ms: int) -> bool:
    """``visible_values(decode_stored(data), now_ms)`` is not empty, read straight off the
    CBOR without building the clock: a replica's query scan asks this of every item it
    sends, and does not otherwise need the clock. InvalidClock for a malformed copy."""
    try:
        entries, anonymous = cbor2.loads(data)
        return any(sibling[0] is not None and (len(sibling) < 3 or sibling[2] > now_ms)
                   for siblings in (anonymous, *(values for _, _, values in entries))
                   for sibling in siblings)
    except (cbor2.CBORDecodeError, TypeError, ValueError, IndexError) as exc:
        raise InvalidClock(f"stored clock: {exc}") from exc


def digest(clock: DVVSet) -> bytes:
    """16-byte stable hash of the clock: equal clocks, equal digests (Merkle leaves)."""
    return digest_encoded(encode(clock))


def digest_encoded(data: bytes) -> bytes:
    """``digest`` of the clock whose ``encode`` is ``data``, without decoding it again."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()
