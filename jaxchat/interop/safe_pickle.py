"""nanochat's pickled files, read without running anything they contain, and written without torch.

A pickle is a program: its ``GLOBAL`` / ``REDUCE`` opcodes import and call any function, so
``pickle.load`` (and ``torch.load`` without ``weights_only``) of a downloaded checkpoint can run
``os.system``. The readers here admit a fixed list of globals and hand back stand-ins, never the
real objects:

``.pt`` (torch's zip serialization): ``<archive>/data.pkl`` is a protocol-2 pickle whose tensors are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` with the
storage a persistent id ``('storage', torch.<Type>Storage, key, location, numel)`` pointing at the raw
little-endian bytes in ``<archive>/data/<key>``. Admitted: ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, the typed storage classes and the
torch dtypes. Everything else is refused with one line naming the file and the global. Tensors come
out as NumPy arrays: a tensor that is its whole storage (a state_dict's usual case) is that storage
reshaped, so tensors saved tied share memory as torch.load's do; any other view (strides, an offset,
an expanded dimension) is copied to a contiguous array. bfloat16 becomes float32 by shifting its bits
(exact), so torch is never needed.

``tokenizer.pkl``: nanochat pickles a ``tiktoken.Encoding``, whose state is the dict
``{name, pat_str, mergeable_ranks, special_tokens}``. Only ``tiktoken.core.Encoding`` is admitted,
as a stand-in that records that dict (checked for types); no tiktoken object is built.

The writers produce what torch and nanochat read: ``write_pt`` emits the pickle opcodes and the zip
records of ``torch.save`` itself (``torch.load(weights_only=True)`` reads them), and
``write_tiktoken_pickle`` pickles a real ``tiktoken.Encoding`` (tiktoken is a jaxchat dependency).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxchat.common import JaxchatError

# torch storage class → element dtype (little-endian; "bfloat16" is read as uint16 bits).
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}
TORCH_DTYPES = {  # torch.<name> dtype objects a pickle may mention (as values; never needed for tensors)
    "float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2", "half": "f2",
    "bfloat16": "bfloat16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4", "int16": "i2",
    "int8": "i1", "uint8": "u1", "bool": "b1",
}
_STORAGE_OF = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
               "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage",
               "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}
MAX_PICKLE_BYTES = 256 << 20  # a state_dict's data.pkl is KBs; a bigger one is not what we read
STORAGE_ALIGNMENT = 64  # torch aligns each record's data to 64 bytes (for mmap loads)


class _Refused(Exception):
    """Raised inside an unpickler; turned into a one-line JaxchatError naming the file."""


class _Frozen:
    """Stand-ins handed to the unpickler: no ``__dict__``, no settable attributes, so a ``BUILD``
    opcode cannot change them."""

    __slots__ = ()

    def __setattr__(self, key: str, value: Any) -> None:
        raise _Refused(f"attempted to set attribute {key!r} on {self!r}")


class _StorageType(_Frozen):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Dtype(_Frozen):
    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Function(_Frozen):
    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.name


class _Storage(_Frozen):
    """A storage's elements, flat (bfloat16 already widened to float32)."""

    __slots__ = ("key", "array")

    def __init__(self, key: str, array: np.ndarray):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "array", array)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32: the upper half of a float32, so exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise _Refused(f"tensor {what} {value!r} is not a tuple of non-negative ints")
    return value


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` as a NumPy copy (validated: it only reads its storage)."""
    if not isinstance(storage, _Storage):
        raise _Refused(f"tensor storage is a {type(storage).__name__}, not a storage record")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride):
        raise _Refused(f"tensor offset {offset!r} / size {size} / stride {stride} are inconsistent")
    if not isinstance(requires_grad, bool) or (hooks is not None and not (isinstance(hooks, dict) and not hooks)):
        raise _Refused("tensor carries backward hooks")  # torch saves an empty OrderedDict here
    flat = storage.array
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise _Refused(f"tensor (offset {offset}, size {size}, stride {stride}) reads past the end of storage "
                       f"{storage.key} ({flat.size} elements)")
    contiguous = tuple(int(np.prod(size[i + 1:], dtype=np.int64)) for i in range(len(size)))
    if offset == 0 and stride == contiguous and int(np.prod(size, dtype=np.int64)) == flat.size:
        return flat.reshape(size)  # the whole storage, as torch.load gives it (tied tensors share it too)
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * itemsize for s in stride],
                                           writeable=False)
    return np.array(view, copy=True)  # any other view: a contiguous copy of its elements


def _rebuild_parameter(data, requires_grad=False, hooks=None) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise _Refused(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


_PT_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Function("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Function("torch._utils._rebuild_parameter", _rebuild_parameter),
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): _Dtype(name) for name in TORCH_DTYPES},
}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


class _PtUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PT_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refused to load global '{module}.{name}' (a .pt state_dict holds only tensors; "
                           f"this file may run code)") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"refused persistent id {str(pid)[:80]} (only tensor storages are read)")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise _Refused(f"malformed storage record {str(pid)[:80]}")
        if key in self.storages:
            return self.storages[key]
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise _Refused(f"storage record {name} is missing") from None
        bf16 = kind.dtype == "bfloat16"
        dtype = np.dtype(("<" if self.byteorder == "little" else ">") + ("u2" if bf16 else kind.dtype))
        if info.file_size != numel * dtype.itemsize:
            raise _Refused(f"storage {name} holds {info.file_size} bytes, {numel} × {kind} needs "
                           f"{numel * dtype.itemsize}")
        array = np.empty(numel, dtype)
        with self.archive.open(info) as f:  # in pieces: never a second whole copy of a big storage
            _read_into(f, array.view(np.uint8), name)
        array = array.astype(dtype.newbyteorder("="), copy=False)
        storage = _Storage(key, _bf16_to_f32(array) if bf16 else array)
        self.storages[key] = storage
        return storage


def _read_into(f, buffer: np.ndarray, name: str, chunk: int = 64 << 20) -> None:
    view = memoryview(buffer)
    for start in range(0, len(view), chunk):
        piece = view[start:start + chunk]
        if f.readinto(piece) != len(piece):
            raise _Refused(f"storage {name} ends early")


def load_pt(path: str | Path) -> Any:
    """The object a ``.pt`` file (torch's zip format) holds: dicts, lists, tuples and plain scalars as
    they are, tensors as NumPy arrays, without torch and without running any code from the file.
    JaxchatError (one line naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise JaxchatError(f"{path} does not exist")
    if not zipfile.is_zipfile(path):
        raise JaxchatError(f"{path}: not a zip-format .pt file (torch.save since torch 1.6 writes one; a legacy "
                           f"or other pickle is not read)")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise _Refused(f"expected one <archive>/data.pkl record, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            info = archive.getinfo(pickles[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise _Refused(f"{pickles[0]} is {info.file_size:,} bytes (more than a state_dict's pickle)")
            byteorder = "little"
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise _Refused(f"unknown byteorder {byteorder!r}")
            return _PtUnpickler(archive.read(pickles[0]), archive, prefix, byteorder).load()
    except _Refused as e:
        raise JaxchatError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, UnicodeDecodeError, OSError) as e:
        raise JaxchatError(f"{path}: not a readable .pt file ({_one_line(e)})") from None


def read_pt(path: str | Path) -> dict[str, np.ndarray]:
    """A state_dict ``.pt`` (name → tensor) as name → NumPy array (see ``load_pt``); JaxchatError when
    the file holds anything but tensors under string keys."""
    obj = load_pt(path)
    if not isinstance(obj, dict):
        raise JaxchatError(f"{path}: holds a {type(obj).__name__}, expected a state_dict (name → tensor)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise JaxchatError(f"{path}: entries {bad[:3]} are not tensors under string names; expected a state_dict")
    return dict(obj)


# ---- tokenizer.pkl --------------------------------------------------------------------------------

_ENCODING_FIELDS = ("name", "pat_str", "mergeable_ranks", "special_tokens")


class _EncodingState(_Frozen):
    """Stand-in for ``tiktoken.core.Encoding``: records the state ``BUILD`` gives it."""

    __slots__ = ("state",)

    def __new__(cls, *args):
        if args:
            raise _Refused("tiktoken Encoding pickled with constructor arguments")
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, str):
            raise _Refused(f"holds tiktoken's registered encoding {state!r} by name, not a trained tokenizer")
        if not isinstance(state, dict) or set(state) != set(_ENCODING_FIELDS):
            raise _Refused(f"Encoding state has keys {sorted(state) if isinstance(state, dict) else type(state)}, "
                           f"expected {list(_ENCODING_FIELDS)}")
        object.__setattr__(self, "state", state)


class _TokenizerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise _Refused(f"refused to load global '{module}.{name}' (a nanochat tokenizer.pkl holds only a tiktoken "
                       f"Encoding; this file may run code)")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refused a persistent id (a tokenizer.pkl has none)")


def read_tiktoken_pickle(path: str | Path) -> tuple[dict[bytes, int], str, dict[str, int], str]:
    """``(mergeable_ranks, pat_str, special_tokens, name)`` of a pickled ``tiktoken.Encoding`` (nanochat's
    ``tokenizer.pkl``), read without building tiktoken objects or running code from the file."""
    path = Path(path)
    if not path.is_file():
        raise JaxchatError(f"{path} does not exist")
    try:
        with open(path, "rb") as f:
            obj = _TokenizerUnpickler(f).load()
    except _Refused as e:
        raise JaxchatError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError, OSError) as e:
        raise JaxchatError(f"{path}: not a readable tokenizer pickle ({_one_line(e)})") from None
    if not isinstance(obj, _EncodingState) or not hasattr(obj, "state"):
        raise JaxchatError(f"{path}: holds a {type(obj).__name__}, expected a pickled tiktoken Encoding")
    state = obj.state
    ranks, pattern, specials, name = (state[k] for k in ("mergeable_ranks", "pat_str", "special_tokens", "name"))
    if not (isinstance(ranks, dict) and all(type(k) is bytes and type(v) is int for k, v in ranks.items())):
        raise JaxchatError(f"{path}: mergeable_ranks is not a dict of bytes → int")
    if not (isinstance(specials, dict) and all(type(k) is str and type(v) is int for k, v in specials.items())):
        raise JaxchatError(f"{path}: special_tokens is not a dict of str → int")
    if not isinstance(pattern, str) or not isinstance(name, str):
        raise JaxchatError(f"{path}: pat_str / name are not strings")
    return ranks, pattern, specials, name


def write_tiktoken_pickle(path: str | Path, mergeable_ranks: dict[bytes, int], pat_str: str,
                          special_tokens: dict[str, int], name: str = "rustbpe") -> Path:
    """Write what nanochat's ``RustBPETokenizer.save`` writes: ``pickle.dump(tiktoken.Encoding(...))``."""
    import tiktoken  # a jaxchat dependency; imported here so reading never builds tiktoken objects

    encoding = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                 special_tokens=special_tokens)
    _atomic_write(Path(path), pickle.dumps(encoding))
    return Path(path)


# ---- writing .pt ----------------------------------------------------------------------------------


class _Pickle:
    """The few protocol-2 opcodes ``torch.save`` uses for a state_dict, emitted directly (the pickle
    module would import ``torch._utils`` to check the globals it names)."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def str_(self, text: str) -> None:
        data = text.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def int_(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)
        elif -(1 << 31) <= value < (1 << 31):
            self.out += b"J" + struct.pack("<i", value)
        else:  # LONG1: little-endian two's complement
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data

    def tuple_(self, items: tuple[int, ...]) -> None:
        self.out += b"("
        for item in items:
            self.int_(item)
        self.out += b"t"

    def ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE

    def tensor(self, storage_type: str, key: str, numel: int, shape: tuple[int, ...]) -> None:
        strides = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # args tuple, then the persistent id tuple
        self.str_("storage")
        self.global_("torch", storage_type)
        self.str_(key)
        self.str_("cpu")
        self.int_(numel)
        self.out += b"tQ"  # TUPLE, BINPERSID
        self.int_(0)  # storage offset
        self.tuple_(shape)
        self.tuple_(strides)
        self.out += b"\x89"  # requires_grad=False
        self.ordered_dict()  # backward hooks
        self.out += b"tR"  # TUPLE, REDUCE


def _storage_type(array: np.ndarray, where: str) -> str:
    name = array.dtype.name  # "bfloat16" for ml_dtypes' (jax's) bfloat16
    if name not in _STORAGE_OF:
        raise JaxchatError(f"{where}: dtype {name} has no torch storage type here; expected one of "
                           f"{', '.join(_STORAGE_OF)}")
    return _STORAGE_OF[name]


def _little_endian_bytes(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array)
    if array.dtype.name != "bfloat16" and array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(array.reshape(-1).view(np.uint8))


def _aligned_info(name: str, offset: int) -> zipfile.ZipInfo:
    """A stored (uncompressed) record whose data starts on a 64-byte boundary, padded like torch's
    writer with an extra field ``FB``."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = offset + 30 + len(name.encode()) + 4  # local header + name + the extra field's header
    pad = -start % STORAGE_ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


def write_pt(path: str | Path, obj: dict[str, np.ndarray] | np.ndarray) -> Path:
    """Write a state_dict (name → array, order kept) or a single array as ``torch.save`` does, without
    torch: the same zip records and pickle opcodes, one storage per array, little-endian, aligned.
    Arrays keep their dtype (float32, bfloat16, float16, ints, bool). Atomic (``.tmp`` + rename)."""
    path = Path(path)
    arrays: list[tuple[str, np.ndarray]] = []
    body = _Pickle()
    if isinstance(obj, dict):
        body.ordered_dict()
        if obj:
            body.out += b"("  # MARK
        for name, value in obj.items():
            if not isinstance(name, str):
                raise JaxchatError(f"{path}: state_dict key {name!r} is not a string")
            array = np.asarray(value)
            body.str_(name)
            body.tensor(_storage_type(array, f"{path}: {name}"), str(len(arrays)), array.size, array.shape)
            arrays.append((str(len(arrays)), array))
        if obj:
            body.out += b"u"  # SETITEMS
    else:
        array = np.asarray(obj)
        body.tensor(_storage_type(array, str(path)), "0", array.size, array.shape)
        arrays.append(("0", array))
    body.out += b"."  # STOP
    prefix = "archive/"
    records: list[tuple[str, bytes | memoryview]] = [
        (prefix + "data.pkl", bytes(body.out)), (prefix + ".format_version", b"1"),
        (prefix + ".storage_alignment", str(STORAGE_ALIGNMENT).encode()), (prefix + "byteorder", b"little"),
        *[(f"{prefix}data/{key}", _little_endian_bytes(array)) for key, array in arrays],
        (prefix + "version", b"3\n"), (prefix + ".data/serialization_id", b"0" * 40),
    ]
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, data in records:
            info = _aligned_info(name, f.tell())
            info.file_size = len(data) if isinstance(data, bytes) else data.nbytes
            with archive.open(info, "w", force_zip64=info.file_size >= zipfile.ZIP64_LIMIT) as record:
                record.write(data)
    os.replace(tmp, path)
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
