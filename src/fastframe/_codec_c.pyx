"""The Cython codec.

The twin of ``_codec_py.py``: same names, same signatures, same results, same
exceptions with the same messages. The pure module is the documentation and
the type source. This one reads every buffer through a ``(const char *,
Py_ssize_t)`` view with an explicit bounds check before each read, and writes
into one growing buffer without a Python object per row or per value.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, _PyBytes_Resize
from cpython.dict cimport PyDict_Copy, PyDict_Next, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject, Py_TYPE
from cpython.mem cimport (
    PyMem_Free, PyMem_Malloc, PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc,
    PyMem_Realloc,
)
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA, PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8, PyUnicode_FromOrdinal,
    PyUnicode_New,
)
from libc.stdint cimport (
    INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint16_t, uint64_t,
    uintptr_t,
)
from libc.errno cimport ENOMEM
from libc.string cimport memchr, memcpy, memset, strlen

import struct
from collections.abc import Mapping

from fastframe.errors import CsvError, ProtocolError
from fastframe.schema import (
    DEFAULT_MAX_FRAME, EOF_KEY, MAX_BATCH_FRAME, TABLES_BY_NAME, TABLES_BY_OPCODE, BatchStatus,
    Opcodes,
)

__all__ = [
    "read_u8", "read_u16", "read_i32", "read_i64", "read_string", "read_string_map",
    "read_u8_list", "read_u8_dict", "Writer", "read_frame_header", "decode_table_body",
    "decode_eof_body", "decode_finished_body", "decode_ack_body", "decode_databatch_body",
    "encode_frame", "encode_table_frame", "encode_eof_frame", "encode_finished_frame",
    "encode_databatch_header", "encode_databatch_frame", "check_embedded", "project_databatch",
    "decode_columns", "encode_csv_batch", "decode_arrow",
]

cdef extern from *:
    """
    #include <float.h>
    #include <stdint.h>
    #include <string.h>

    /* The wire is little-endian: no-ops on little-endian hosts, byte swaps elsewhere. */
    #if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__)
    #  define FF_BIG_ENDIAN (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
    #elif defined(WORDS_BIGENDIAN)
    #  define FF_BIG_ENDIAN 1
    #else
    #  define FF_BIG_ENDIAN 0
    #endif
    #if FF_BIG_ENDIAN
    static inline uint16_t ff_le16(uint16_t v) { return (uint16_t)((v >> 8) | (v << 8)); }
    static inline uint32_t ff_le32(uint32_t v) {
        return (v >> 24) | ((v >> 8) & 0xFF00u) | ((v & 0xFF00u) << 8) | (v << 24);
    }
    static inline uint64_t ff_le64(uint64_t v) {
        return ((uint64_t)ff_le32((uint32_t)v) << 32) | ff_le32((uint32_t)(v >> 32));
    }
    #else
    static inline uint16_t ff_le16(uint16_t v) { return v; }
    static inline uint32_t ff_le32(uint32_t v) { return v; }
    static inline uint64_t ff_le64(uint64_t v) { return v; }
    #endif

    /* Integers are copied to a local (no unaligned access), then put in host order. */
    static inline uint16_t ff_get_u16(const char *p) {
        uint16_t v; memcpy(&v, p, 2); return ff_le16(v);
    }
    static inline int32_t ff_get_i32(const char *p) {
        uint32_t v; memcpy(&v, p, 4); return (int32_t)ff_le32(v);
    }
    static inline int64_t ff_get_i64(const char *p) {
        uint64_t v; memcpy(&v, p, 8); return (int64_t)ff_le64(v);
    }
    static inline void ff_put_u16(char *p, uint16_t x) {
        uint16_t v = ff_le16(x); memcpy(p, &v, 2);
    }
    static inline void ff_put_i32(char *p, int32_t x) {
        uint32_t v = ff_le32((uint32_t)x); memcpy(p, &v, 4);
    }
    static inline void ff_put_i64(char *p, int64_t x) {
        uint64_t v = ff_le64((uint64_t)x); memcpy(p, &v, 8);
    }

    /* Whether p[0:n] is all ASCII: 64 bytes a step (compilers vectorize it), then 8, then 1. */
    static inline int ff_is_ascii(const char *p, Py_ssize_t n) {
        const uint64_t high = 0x8080808080808080ULL;
        uint64_t acc = 0, word;
        Py_ssize_t i = 0;
        int k;
        for (; n - i >= 64; i += 64) {
            for (k = 0; k < 64; k += 8) {
                memcpy(&word, p + i + k, 8);
                acc |= word;
            }
            if (acc & high) return 0;
        }
        for (; n - i >= 8; i += 8) {
            memcpy(&word, p + i, 8);
            acc |= word;
        }
        for (; i < n; i++) acc |= (unsigned char)p[i];
        return !(acc & high);
    }

    /* a[0:n] == b[0:n], for the short keys of a table: no call to memcmp. */
    static inline int ff_equal(const char *a, const char *b, Py_ssize_t n) {
        uint64_t x, y;
        for (; n >= 8; a += 8, b += 8, n -= 8) {
            memcpy(&x, a, 8);
            memcpy(&y, b, 8);
            if (x != y) return 0;
        }
        for (; n > 0; n--) if (*a++ != *b++) return 0;
        return 1;
    }

    /* memcpy for the short strings of a row, without a call for the shortest. */
    static inline void ff_copy(char *d, const char *s, Py_ssize_t n) {
        uint64_t a, b;
        uint32_t x, y;
        if (n > 16) {
            memcpy(d, s, (size_t)n);
        } else if (n >= 8) {
            memcpy(&a, s, 8); memcpy(&b, s + n - 8, 8);
            memcpy(d, &a, 8); memcpy(d + n - 8, &b, 8);
        } else if (n >= 4) {
            memcpy(&x, s, 4); memcpy(&y, s + n - 4, 4);
            memcpy(d, &x, 4); memcpy(d + n - 4, &y, 4);
        } else if (n > 0) {
            d[0] = s[0]; d[n / 2] = s[n / 2]; d[n - 1] = s[n - 1];
        }
    }

    /* ff_copy, with no call for up to 32 bytes either (two overlapping 16-byte moves). */
    static inline void ff_copy32(char *d, const char *s, Py_ssize_t n) {
        uint64_t a[2], b[2];
        if (n >= 16 && n <= 32) {
            memcpy(a, s, 16); memcpy(b, s + n - 16, 16);
            memcpy(d, a, 16); memcpy(d + n - 16, b, 16);
        } else {
            ff_copy(d, s, n);
        }
    }

    /* a == b for two ready strs, as str.__eq__ compares them. */
    static inline int ff_same_str(PyObject *a, PyObject *b) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        size_t size = (size_t)n * PyUnicode_KIND(a);
        return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
               && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), size) == 0;
    }

    /* A 2- to 8-byte string as one word: with its length, a unique key. */
    static inline uint64_t ff_short_key(const char *p, Py_ssize_t n) {
        uint32_t lo, hi;
        if (n >= 4) {
            memcpy(&lo, p, 4);
            memcpy(&hi, p + n - 4, 4);
            return ((uint64_t)hi << 32) | lo;
        }
        return (uint64_t)(unsigned char)p[0] | (uint64_t)(unsigned char)p[1] << 8
               | (uint64_t)(unsigned char)p[n - 1] << 16;
    }

    /* Fibonacci hashing of a short key to one of 2**bits slots. */
    static inline unsigned int ff_slot(uint64_t key, Py_ssize_t n, int bits) {
        return (unsigned int)(((key ^ (uint64_t)n) * 0x9E3779B97F4A7C15ULL) >> (64 - bits));
    }

    #if defined(__GNUC__) || defined(__clang__)
    #  define ff_prefetch(p) __builtin_prefetch(p)
    #else
    #  define ff_prefetch(p) ((void)(p))
    #endif

    /* Plain decimals ([+-]?digits[.digits]) whose digits fit in 2**53 and with at
       most 22 after the point: M / 10**k with both exact doubles, which one IEEE
       division rounds correctly (Clinger's fast path), so the result is the
       one PyOS_string_to_double gives. Anything else returns 0 for the full
       parser. Only where doubles are evaluated as doubles (not x87). */
    static inline int ff_simple_decimal(const char *p, Py_ssize_t n, double *out) {
    #if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
        static const double pow10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
            1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
        Py_ssize_t i = 0, digits = 0, point = -1;
        uint64_t m = 0;
        int negative = 0;
        double v;
        if (i < n && (p[i] == '+' || p[i] == '-')) negative = p[i++] == '-';
        if (i == n || p[i] < '0' || p[i] > '9') return 0;
        for (; i < n; i++) {
            if (p[i] >= '0' && p[i] <= '9') {
                if (++digits > 19) return 0;
                m = m * 10 + (uint64_t)(p[i] - '0');
            } else if (p[i] == '.' && point < 0) {
                point = i;
            } else {
                return 0;
            }
        }
        if (m > ((uint64_t)1 << 53)) return 0;
        Py_ssize_t k = point < 0 ? 0 : n - point - 1;
        if (k > 22) return 0;
        v = (double)m / pow10[k];
        *out = negative ? -v : v;
        return 1;
    #else
        (void)p; (void)n; (void)out;
        return 0;
    #endif
    }

    /* Start loading a dict row's entry table (a few cache lines), so that reading
       its values later does not wait on memory. Prefetching never faults. */
    static inline void ff_prefetch_dict(PyObject *o) {
        if (PyDict_CheckExact(o)) {
            const char *k = (const char *)((PyDictObject *)o)->ma_keys;
            ff_prefetch(k); ff_prefetch(k + 64); ff_prefetch(k + 128); ff_prefetch(k + 192);
        }
    }

    /* The characters of an ASCII str, which are its UTF-8 bytes; NULL for any other str. */
    static inline const char *ff_ascii_data(PyObject *s, Py_ssize_t *n) {
    #if PY_VERSION_HEX < 0x030C0000
        if (!PyUnicode_IS_READY(s)) return NULL;   /* a legacy str: the slow path readies it */
    #endif
        if (!PyUnicode_IS_ASCII(s)) return NULL;
        *n = PyUnicode_GET_LENGTH(s);
        return (const char *)PyUnicode_DATA(s);
    }

    /* A row-class instance (a tuple subclass) with n unset items, as tuple.__new__ makes it. */
    static inline PyObject *ff_alloc_row(PyObject *cls, Py_ssize_t n) {
        return ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, n);
    }
    """
    uint16_t ff_get_u16(const char* p) noexcept nogil
    int32_t ff_get_i32(const char* p) noexcept nogil
    int64_t ff_get_i64(const char* p) noexcept nogil
    void ff_put_u16(char* p, uint16_t x) noexcept nogil
    void ff_put_i32(char* p, int32_t x) noexcept nogil
    void ff_put_i64(char* p, int64_t x) noexcept nogil
    bint ff_is_ascii(const char* p, Py_ssize_t n) noexcept nogil
    bint ff_equal(const char* a, const char* b, Py_ssize_t n) noexcept nogil
    void ff_copy(char* d, const char* s, Py_ssize_t n) noexcept nogil
    void ff_copy32(char* d, const char* s, Py_ssize_t n) noexcept nogil
    bint ff_same_str(PyObject* a, PyObject* b) noexcept
    uint64_t ff_short_key(const char* p, Py_ssize_t n) noexcept nogil
    unsigned int ff_slot(uint64_t key, Py_ssize_t n, int bits) noexcept nogil
    const char* ff_ascii_data(PyObject* s, Py_ssize_t* n) noexcept
    object ff_alloc_row(object cls, Py_ssize_t n)
    void ff_prefetch(const void* p) noexcept nogil
    bint ff_simple_decimal(const char* p, Py_ssize_t n, double* out) noexcept
    void ff_prefetch_dict(PyObject* o) noexcept

cdef extern from "Python.h":
    bint PyDict_Check(object o)
    bint PyDict_CheckExact(object o)
    Py_ssize_t PyDict_GET_SIZE(object d)
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(PyObject* o)
    bint PyList_CheckExact(object o)
    bint PyTuple_CheckExact(object o)
    PyObject** PySequence_Fast_ITEMS(object o)
    void PyObject_GC_UnTrack(void* o)
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char* v, Py_ssize_t n) except NULL
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1
    object PyNumber_Index(object o)
    double PyOS_string_to_double(const char* s, char** end, PyObject* overflow) except? -1.0
    int PyBUF_WRITABLE

_ROW_TYPES = ("object", "dict", "tuple")
_ACK_NAMES = {Opcodes.BATCH_RECV_SUCCESS: "BATCH_RECV_SUCCESS",
              Opcodes.BATCH_RECV_FAIL: "BATCH_RECV_FAIL"}
_KEY_INDEX = {
    op: {k: i for i, k in enumerate(spec.required_keys)} for op, spec in TABLES_BY_OPCODE.items()
}
cdef int _MAX_OPCODE = max(Opcodes)
cdef int _MAX_STATUS = max(BatchStatus)
_I32_PACK_ERROR = "'i' format requires -2147483648 <= number <= 2147483647"


# -- tables -----------------------------------------------------------------

cdef enum:
    MAX_KEYS = 16       # key sets are bitmasks in an unsigned int
    N_OPCODES = 16

ctypedef struct Table:
    int opcode
    int n_keys
    const char* wire_key[MAX_KEYS]   # [i32 len][UTF-8 bytes] of each required key
    Py_ssize_t key_len[MAX_KEYS]      # len of the bytes, without the prefix

cdef Table _tables[N_OPCODES]
_wire_keys = []     # owns the bytes the tables point into


cdef void _init_tables() except *:
    cdef Table* t
    for op, spec in TABLES_BY_OPCODE.items():
        # Rows are built in place (ff_alloc_row), which only a tuple subclass allows.
        if (not 0 <= op < N_OPCODES or len(spec.required_keys) > MAX_KEYS
                or not issubclass(spec.row_class, tuple)):
            raise ImportError(f"table {spec.name} does not fit the Cython codec's tables")
        t = &_tables[<int>op]
        t.opcode = op
        t.n_keys = len(spec.required_keys)
        for i, key in enumerate(spec.required_keys):
            raw = key.encode()
            wire = struct.pack("<i", len(raw)) + raw
            _wire_keys.append(wire)
            t.wire_key[i] = PyBytes_AS_STRING(wire)
            t.key_len[i] = len(raw)


_init_tables()


# -- primitives -------------------------------------------------------------

cdef enum:
    UTF8_INVALID = 0
    UTF8_ASCII = 1
    UTF8_OTHER = 2


cdef bint _utf8_valid(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Whether Python's strict UTF-8 decoder accepts ``s[0:n]``.

    Well-formed UTF-8 only: no overlong forms, no surrogates (U+D800-DFFF),
    nothing above U+10FFFF.
    """
    cdef Py_ssize_t i = 0
    cdef unsigned char c, low, high
    cdef int follow, k
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        low = 0x80
        high = 0xBF
        if 0xC2 <= c <= 0xDF:
            follow = 1
        elif 0xE0 <= c <= 0xEF:
            follow = 2
            if c == 0xE0:
                low = 0xA0      # overlong
            elif c == 0xED:
                high = 0x9F     # surrogates
        elif 0xF0 <= c <= 0xF4:
            follow = 3
            if c == 0xF0:
                low = 0x90      # overlong
            elif c == 0xF4:
                high = 0x8F     # above U+10FFFF
        else:
            return False
        if n - i <= follow or not low <= s[i + 1] <= high:
            return False
        for k in range(2, follow + 1):
            if s[i + k] & 0xC0 != 0x80:
                return False
        i += follow + 1
    return True


cdef inline int _utf8_kind(const char* p, Py_ssize_t n) noexcept nogil:
    """What a strict UTF-8 decode of ``p[0:n]`` gives: an error, ASCII or other text."""
    if ff_is_ascii(p, n):
        return UTF8_ASCII
    return UTF8_OTHER if _utf8_valid(<const unsigned char*>p, n) else UTF8_INVALID


cdef inline str _new_str(const char* p, Py_ssize_t n, bint ascii):
    """A str from bytes that ``_utf8_kind`` accepted."""
    cdef str s
    if not ascii:
        return PyUnicode_DecodeUTF8(p, n, NULL)
    if n == 1:
        return PyUnicode_FromOrdinal(<unsigned char>p[0])   # the interpreter's shared one
    s = PyUnicode_New(n, 127)
    memcpy(PyUnicode_1BYTE_DATA(s), p, n)
    return s


cdef _truncated(Py_ssize_t need, object offset, Py_ssize_t have, object opcode):
    return ProtocolError(
        f"truncated: need {need} bytes at offset {offset}, have {have if have > 0 else 0}", opcode)


cdef Py_ssize_t _offset(object offset) except -1:
    """A reader's offset: ValueError when negative; a huge one saturates (it is past the end)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    return PyNumber_AsSsize_t(offset, NULL)


cdef int _get_bytes(object obj, Py_buffer* view) except -1:
    """Hold the bytes of a buffer as ``_codec_py._bytes_of`` sees them, failing as it fails."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except Exception:
        PyObject_GetBuffer(memoryview(obj).cast("B"), view, PyBUF_SIMPLE)
    return 0


cdef inline int _need(const Py_buffer* view, Py_ssize_t off, Py_ssize_t width,
                      object offset) except -1:
    if view.len - off < width:
        raise _truncated(width, offset, view.len - off, None)
    return 0


cdef str _str_at(const char* data, Py_ssize_t size, Py_ssize_t pos, object at, object opcode,
                 Py_ssize_t* end):
    """``[i32 n][n bytes of UTF-8]`` at ``pos`` -> str; ``at`` is ``pos`` as messages print it."""
    cdef int32_t n
    cdef int kind
    if size - pos < 4:
        raise _truncated(4, at, size - pos, opcode)
    n = ff_get_i32(data + pos)
    if n < 0:
        raise ProtocolError(f"negative string length {n} at offset {at}", opcode)
    pos += 4
    if n > size - pos:
        raise _truncated(n, pos, size - pos, opcode)
    kind = _utf8_kind(data + pos, n)
    if kind == UTF8_INVALID:
        raise ProtocolError(f"invalid UTF-8 in string at offset {at}", opcode)
    end[0] = pos + n
    return _new_str(data + pos, n, kind == UTF8_ASCII)


cdef list _u8_list_at(const char* data, Py_ssize_t size, Py_ssize_t pos, object at,
                      object opcode, Py_ssize_t* end):
    cdef Py_ssize_t n, i
    cdef list result
    if size - pos < 1:
        raise _truncated(1, at, size - pos, opcode)
    n = <uint8_t>data[pos]
    pos += 1
    if n > size - pos:
        raise _truncated(n, pos, size - pos, opcode)
    result = PyList_New(n)
    for i in range(n):
        item = <uint8_t>data[pos + i]
        Py_INCREF(item)
        PyList_SET_ITEM(result, i, item)
    end[0] = pos + n
    return result


cdef dict _u8_dict_at(const char* data, Py_ssize_t size, Py_ssize_t pos, object at,
                      object opcode, Py_ssize_t* end):
    cdef Py_ssize_t n, i
    cdef dict result = {}
    if size - pos < 1:
        raise _truncated(1, at, size - pos, opcode)
    n = <uint8_t>data[pos]
    pos += 1
    if 2 * n > size - pos:
        raise _truncated(2 * n, pos, size - pos, opcode)
    for i in range(pos, pos + 2 * n, 2):
        key = <uint8_t>data[i]
        if key in result:
            raise ProtocolError(f"duplicate key {key} in u8 dict at offset {at}", opcode)
        result[key] = <uint8_t>data[i + 1]
    end[0] = pos + 2 * n
    return result


cdef tuple _read_fixed(buf, offset, int width):
    """The little-endian integer of ``width`` bytes (u8, u16, i32 or i64) at ``offset``."""
    cdef Py_buffer view
    cdef Py_ssize_t off = _offset(offset)
    cdef const char* p
    _get_bytes(buf, &view)
    try:
        _need(&view, off, width, offset)
        p = <const char*>view.buf + off
        if width == 1:
            value = (<const uint8_t*>p)[0]
        elif width == 2:
            value = ff_get_u16(p)
        elif width == 4:
            value = ff_get_i32(p)
        else:
            value = ff_get_i64(p)
        return value, off + width
    finally:
        PyBuffer_Release(&view)


def read_u8(buf, offset=0):
    """``[u8]`` at ``offset`` -> ``(value, offset + 1)``."""
    return _read_fixed(buf, offset, 1)


def read_u16(buf, offset=0):
    """``[u16 LE]`` at ``offset`` -> ``(value, offset + 2)``."""
    return _read_fixed(buf, offset, 2)


def read_i32(buf, offset=0):
    """``[i32 LE]`` at ``offset`` -> ``(value, offset + 4)``."""
    return _read_fixed(buf, offset, 4)


def read_i64(buf, offset=0):
    """``[i64 LE]`` at ``offset`` -> ``(value, offset + 8)``."""
    return _read_fixed(buf, offset, 8)


def read_string(buf, offset=0):
    """``[i32 n][n bytes of UTF-8]`` -> ``(str, next_offset)``."""
    cdef Py_buffer view
    cdef Py_ssize_t off, end
    _get_bytes(buf, &view)
    try:
        off = _offset(offset)
        value = _str_at(<const char*>view.buf, view.len, off, offset, None, &end)
        return value, end
    finally:
        PyBuffer_Release(&view)


def read_string_map(buf, offset=0):
    """``[i32 nPairs]([key string][value string]) * nPairs`` -> ``(dict, next_offset)``.

    A repeated key is an error (a map has one value per key).
    """
    cdef Py_buffer view
    cdef Py_ssize_t off, pos
    cdef const char* data
    cdef int32_t n
    cdef dict result = {}
    _get_bytes(buf, &view)
    try:
        off = _offset(offset)
        data = <const char*>view.buf
        if view.len - off < 4:
            raise _truncated(4, offset, view.len - off, None)
        n = ff_get_i32(data + off)
        if n < 0:
            raise ProtocolError(f"negative pair count {n} at offset {offset}")
        pos = off + 4
        for _ in range(n):
            key = _str_at(data, view.len, pos, pos, None, &pos)
            value = _str_at(data, view.len, pos, pos, None, &pos)
            if key in result:
                raise ProtocolError(f"duplicate key {key!r} in string map at offset {offset}")
            result[key] = value
        return result, pos
    finally:
        PyBuffer_Release(&view)


def read_u8_list(buf, offset=0):
    """``[u8 n][n x u8]`` -> ``(list, next_offset)``."""
    cdef Py_buffer view
    cdef Py_ssize_t off, end
    _get_bytes(buf, &view)
    try:
        off = _offset(offset)
        value = _u8_list_at(<const char*>view.buf, view.len, off, offset, None, &end)
        return value, end
    finally:
        PyBuffer_Release(&view)


def read_u8_dict(buf, offset=0):
    """``[u8 n]([key u8][value u8]) * n`` -> ``(dict, next_offset)``; a repeated key is an error."""
    cdef Py_buffer view
    cdef Py_ssize_t off, end
    _get_bytes(buf, &view)
    try:
        off = _offset(offset)
        value = _u8_dict_at(<const char*>view.buf, view.len, off, offset, None, &end)
        return value, end
    finally:
        PyBuffer_Release(&view)


# -- writer -----------------------------------------------------------------

ctypedef struct Buf:
    # A growable output buffer. Encoders copy it into their result once:
    # cheaper than shrinking a bigger bytes object in place, whose fresh
    # memory the allocator would map (and fault in) anew on every call.
    char* data
    Py_ssize_t len
    Py_ssize_t cap
    # Or, if not NULL, the bytes object that ``data`` points into (owned by
    # the Buf): encode_table_frame's result itself, shrunk to ``len`` at the
    # end. For a 1 MiB table frame that measured faster than the final copy.
    PyObject* owner


cdef int _grow(Buf* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef char* data
    if cap < b.len + need:
        cap = b.len + need
    if cap < 64:
        cap = 64
    if b.owner != NULL:
        _PyBytes_Resize(&b.owner, cap)   # on failure it is NULL, and the error raised
        b.data = PyBytes_AS_STRING(<object>b.owner)
        b.cap = cap
        return 0
    data = <char*>PyMem_Realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data = data
    b.cap = cap
    return 0


cdef inline char* _room(Buf* b, Py_ssize_t n) except NULL:
    """Where the next ``n`` bytes go; they count as written."""
    cdef char* p
    if n > b.cap - b.len or b.data == NULL:
        _grow(b, n)
    p = b.data + b.len
    b.len += n
    return p


cdef inline bytes _bytes(const Buf* b):
    return PyBytes_FromStringAndSize(b.data, b.len)


# Each value is converted (and checked) before room is made for it: a failed
# write leaves the buffer as it was.
cdef inline int _put_u8(Buf* b, uint8_t value) except -1:
    _room(b, 1)[0] = <char>value
    return 0


cdef inline int _put_u16(Buf* b, uint16_t value) except -1:
    ff_put_u16(_room(b, 2), value)
    return 0


cdef inline int _put_i32(Buf* b, int32_t value) except -1:
    ff_put_i32(_room(b, 4), value)
    return 0


cdef inline int _put_i64(Buf* b, int64_t value) except -1:
    ff_put_i64(_room(b, 8), value)
    return 0


cdef int64_t _check_range(str name, object value, int64_t low, int64_t high) except? -1:
    cdef int overflow
    cdef int64_t v
    if not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or v < low or v > high:
        raise ValueError(f"{name} out of range [{low}, {high}]: {value}")
    return v


cdef inline int _put_string_pair(Buf* b, const char* key, Py_ssize_t key_size, const char* p,
                                 Py_ssize_t n) except -1:
    """``key_size`` bytes of a key's wire string, then ``[i32 n][n bytes]``."""
    cdef char* out
    if n > INT32_MAX:
        raise struct.error(_I32_PACK_ERROR)
    out = _room(b, key_size + 4 + n)
    ff_copy(out, key, key_size)
    ff_put_i32(out + key_size, <int32_t>n)
    ff_copy(out + key_size + 4, p, n)
    return 0


cdef int _put_utf8_pair(Buf* b, const char* key, Py_ssize_t key_size, str value) except -1:
    """A str that is not ASCII; encoding errors are ``str.encode``'s own."""
    cdef bytes raw = PyUnicode_AsUTF8String(value)
    return _put_string_pair(b, key, key_size, PyBytes_AS_STRING(raw), len(raw))


cdef inline int _put_pair(Buf* b, const char* key, Py_ssize_t key_size, PyObject* value) except -1:
    """``key_size`` bytes of a key's wire string, then ``[i32 n][UTF-8]`` of a str."""
    cdef Py_ssize_t n
    cdef const char* p = ff_ascii_data(value, &n)
    if p == NULL:
        return _put_utf8_pair(b, key, key_size, <str>value)
    return _put_string_pair(b, key, key_size, p, n)


cdef inline int _put_str(Buf* b, str value) except -1:
    """``[i32 n][UTF-8]`` of a str."""
    return _put_pair(b, NULL, 0, <PyObject*>value)


cdef int _put_buffer(Buf* b, object data) except -1:
    """Append a buffer, or fail like ``bytearray +=``."""
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except Exception:
        name = Py_TYPE(data).tp_name.decode("utf-8")
        raise TypeError(f"can't concat {name} to bytearray") from None
    try:
        memcpy(_room(b, view.len), view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int _put_u8_list(Buf* b, object values) except -1:
    if len(values) > 0xFF:
        raise ValueError(f"u8 list too long: {len(values)} items, at most 255")
    for v in values:
        _check_range("u8 list item", v, 0, 0xFF)
    _put_u8(b, <uint8_t>len(values))
    _put_buffer(b, bytes(values))
    return 0


cdef int _put_u8_dict(Buf* b, object mapping) except -1:
    if len(mapping) > 0xFF:
        raise ValueError(f"u8 dict too long: {len(mapping)} items, at most 255")
    _put_u8(b, <uint8_t>len(mapping))
    for key, value in mapping.items():
        _put_u8(b, <uint8_t>_check_range("u8 dict key", key, 0, 0xFF))
        _put_u8(b, <uint8_t>_check_range("u8 dict value", value, 0, 0xFF))
    return 0


cdef class Writer:
    """A growable output buffer with the protocol's primitive writers.

    ``getvalue()`` returns the bytes written so far. Values out of range raise
    ``ValueError``; values of the wrong type raise ``TypeError``.
    """

    cdef Buf _buf

    def __dealloc__(self):
        PyMem_Free(self._buf.data)

    def __len__(self):
        return self._buf.len

    def getvalue(self):
        return _bytes(&self._buf)

    def write_u8(self, value):
        _put_u8(&self._buf, <uint8_t>_check_range("u8", value, 0, 0xFF))

    def write_u16(self, value):
        _put_u16(&self._buf, <uint16_t>_check_range("u16", value, 0, 0xFFFF))

    def write_i32(self, value):
        _put_i32(&self._buf, <int32_t>_check_range("i32", value, INT32_MIN, INT32_MAX))

    def write_i64(self, value):
        _put_i64(&self._buf, _check_range("i64", value, INT64_MIN, INT64_MAX))

    def write_bytes(self, data):
        _put_buffer(&self._buf, data)

    def write_string(self, value):
        if not isinstance(value, str):
            raise TypeError(f"string must be str, not {type(value).__name__}")
        _put_str(&self._buf, value)

    def write_string_map(self, mapping):
        n = len(mapping)
        if n > INT32_MAX:
            raise struct.error(_I32_PACK_ERROR)
        _put_i32(&self._buf, <int32_t>n)
        for key, value in mapping.items():
            self.write_string(key)
            self.write_string(value)

    def write_u8_list(self, values):
        _put_u8_list(&self._buf, values)

    def write_u8_dict(self, mapping):
        _put_u8_dict(&self._buf, mapping)


cdef bytes _frame(Buf* b, int opcode):
    """The frame whose body follows the 5 bytes reserved at the start of ``b``."""
    cdef Py_ssize_t n = b.len - 5
    if n > INT32_MAX:
        raise ValueError(f"frame body too long: {n} bytes")
    b.data[0] = <char>opcode
    ff_put_i32(b.data + 1, <int32_t>n)
    return _bytes(b)


# -- frames -----------------------------------------------------------------

def read_frame_header(buf, offset=0, max_length=DEFAULT_MAX_FRAME):
    """``[u8 opcode][i32 length]`` -> ``(opcode, length)``.

    Fewer than 5 bytes, an unknown opcode, a negative length or one over
    ``max_length`` is a fatal ``ProtocolError`` (``fatal=True``): such a frame
    cannot be delimited or must not be read.
    """
    cdef Py_buffer view
    cdef Py_ssize_t off
    cdef int opcode
    cdef int32_t length
    _get_bytes(buf, &view)
    try:
        off = _offset(offset)
        if view.len - off < 5:
            error = _truncated(5, offset, view.len - off, None)
            error.fatal = True
            raise error
        opcode = (<const uint8_t*>view.buf)[off]
        length = ff_get_i32(<const char*>view.buf + off + 1)
    finally:
        PyBuffer_Release(&view)
    if opcode > _MAX_OPCODE:
        raise ProtocolError(f"unknown opcode {opcode}", opcode, True)
    if length < 0:
        raise ProtocolError(f"negative frame length {length}", opcode, True)
    if length > max_length:
        raise ProtocolError(f"frame length {length} exceeds the limit of {max_length} bytes",
                            opcode, True)
    return opcode, length


def encode_frame(opcode, body):
    """``[u8 opcode][i32 len(body)][body]``."""
    cdef Py_buffer view
    cdef int op
    cdef bytes frame
    cdef char* out
    _get_bytes(body, &view)
    try:
        op = <int>_check_range("opcode", opcode, 0, 0xFF)
        if view.len > INT32_MAX:
            raise ValueError(f"frame body too long: {view.len} bytes")
        frame = PyBytes_FromStringAndSize(NULL, 5 + view.len)
        out = PyBytes_AS_STRING(frame)
        out[0] = <char>op
        ff_put_i32(out + 1, <int32_t>view.len)
        memcpy(out + 5, view.buf, view.len)
        return frame
    finally:
        PyBuffer_Release(&view)


# -- table bodies -----------------------------------------------------------

cdef _table_spec(opcode):
    spec = TABLES_BY_OPCODE.get(opcode) if isinstance(opcode, int) else None
    if spec is None:
        raise ValueError(f"not a table opcode: {opcode!r}")
    return spec


cdef int _column_indexes(spec, columns, int* picks) except -1:
    """Store each column's key index in ``picks`` (default: all, spec order); return the count."""
    cdef int n = 0, i
    cdef unsigned int seen = 0
    if columns is None:
        for i in range(len(spec.required_keys)):
            picks[i] = i
        return len(spec.required_keys)
    index = _KEY_INDEX[spec.opcode]
    for c in columns:
        found = index.get(c) if isinstance(c, str) else None
        if found is None:
            raise ValueError(f"unknown column {c!r} for table {spec.name}")
        i = found
        if seen >> i & 1:
            raise ValueError(f"duplicate column {c!r}")
        seen |= 1u << i
        picks[n] = i
        n += 1
    return n


cdef enum ScanError:
    E_TRUNCATED = 1     # a: bytes needed, b: offset
    E_NEGATIVE_ROWS     # a: row count
    E_STATUS            # a: status
    E_ROW_COUNT         # a: row count
    E_PAIRS             # a: pairs expected, b: pairs found
    E_PAIRS_AT_MOST     # a: pairs found
    E_NEGATIVE_LENGTH   # a: length, b: offset
    E_UNKNOWN_KEY       # a: key length, b: offset of the key string
    E_DUPLICATE_KEY     # a: key index
    E_NOT_IN_COLUMNS    # a: key index
    E_UTF8              # b: offset of the string
    E_TRAILING          # a: bytes left

ctypedef struct Scan:
    # A table body being validated one row at a time, without the GIL; on a
    # failure, error/row/a/b say what to raise.
    const char* data
    Py_ssize_t size
    Py_ssize_t pos
    const Table* table
    int32_t n_rows
    int64_t batch_number
    int status
    bint ascii                      # the whole body is ASCII, so every value is
    int order[MAX_KEYS]             # the previous row's keys, in its order: the likely next ones
    int expected                    # pairs per row; -1 until a projection's row 0 sets it
    unsigned int present            # the keys every row carries, one bit per key index
    int n_present
    int present_order[MAX_KEYS]     # those keys in row 0's order (spec order for a full batch)
    int error
    Py_ssize_t row, a, b

ctypedef struct Row:
    # Where the scanned row's pairs are, by key index.
    Py_ssize_t pair[MAX_KEYS]       # the key string
    Py_ssize_t start[MAX_KEYS]      # the value's bytes
    Py_ssize_t length[MAX_KEYS]
    unsigned int ascii              # bit per key index: the value is ASCII


cdef inline int _fail(Scan* s, int error, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    s.error = error
    s.a = a
    s.b = b
    return -1


cdef int _scan_header(Scan* s, const char* data, Py_ssize_t size) noexcept nogil:
    """``[i32 nRows][i64 batchNumber][u8 status]``."""
    s.data = data
    s.size = size
    s.row = 0
    if size < 13:
        return _fail(s, E_TRUNCATED, 13, 0)
    s.n_rows = ff_get_i32(data)
    s.batch_number = ff_get_i64(data + 4)
    s.status = <uint8_t>data[12]
    s.pos = 13
    if s.n_rows < 0:
        return _fail(s, E_NEGATIVE_ROWS, s.n_rows, 0)
    if s.status > _MAX_STATUS:
        return _fail(s, E_STATUS, s.status, 0)
    return 0


cdef int _scan_start(Scan* s, const Table* table, const char* data, Py_ssize_t size,
                     bint projected) noexcept nogil:
    cdef int k
    if _scan_header(s, data, size) < 0:
        return -1
    # Every row takes at least its 4-byte pair count: reject impossible counts
    # before building anything proportional to them.
    if s.n_rows > (size - 13) // 4:
        return _fail(s, E_ROW_COUNT, s.n_rows, 0)
    s.table = table
    s.ascii = ff_is_ascii(data + 13, size - 13)
    s.expected = -1
    s.present = 0
    s.n_present = 0
    for k in range(table.n_keys):
        s.order[k] = k
    if not projected:
        s.expected = s.n_present = table.n_keys
        s.present = (1u << table.n_keys) - 1
        for k in range(table.n_keys):
            s.present_order[k] = k
    return 0


cdef inline int _scan_string(Scan* s, Py_ssize_t* start, Py_ssize_t* length) noexcept nogil:
    """``[i32 n][n bytes]`` at ``s.pos``: where the bytes are; moves past them."""
    cdef Py_ssize_t pos = s.pos
    cdef int32_t n
    if s.size - pos < 4:
        return _fail(s, E_TRUNCATED, 4, pos)
    n = ff_get_i32(s.data + pos)
    if n < 0:
        return _fail(s, E_NEGATIVE_LENGTH, n, pos)
    pos += 4
    if n > s.size - pos:
        return _fail(s, E_TRUNCATED, n, pos)
    start[0] = pos
    length[0] = n
    s.pos = pos + n
    return 0


cdef inline int _key_index(const Table* t, const char* p, Py_ssize_t n) noexcept nogil:
    cdef int k
    for k in range(t.n_keys):
        if t.key_len[k] == n and ff_equal(t.wire_key[k] + 4, p, n):
            return k
    return -1


cdef int _scan_row(Scan* s, Row* row, Py_ssize_t r) noexcept nogil:
    """Validate row ``r`` and locate its pairs: ``_codec_py._scan_rows``'s checks, in its order."""
    cdef const Table* t = s.table
    cdef Py_ssize_t at, start, length
    cdef int32_t n_pairs
    cdef int j, k, kind
    cdef unsigned int seen = 0, bit
    s.row = r
    if s.size - s.pos < 4:
        return _fail(s, E_TRUNCATED, 4, s.pos)
    n_pairs = ff_get_i32(s.data + s.pos)
    if s.expected >= 0 and n_pairs != s.expected:
        return _fail(s, E_PAIRS, s.expected, n_pairs)
    if n_pairs < 0 or n_pairs > t.n_keys:
        return _fail(s, E_PAIRS_AT_MOST, n_pairs, 0)
    s.pos += 4
    row.ascii = 0
    for j in range(n_pairs):
        at = s.pos
        if _scan_string(s, &start, &length) < 0:
            return -1
        # Rows mostly list their keys in the same order (spec order, from fastframe's client).
        k = s.order[j]
        if t.key_len[k] != length or not ff_equal(t.wire_key[k] + 4, s.data + start, length):
            k = _key_index(t, s.data + start, length)
            if k < 0:
                return _fail(s, E_UNKNOWN_KEY, length, at)
            s.order[j] = k
        bit = 1u << k
        if seen & bit:
            return _fail(s, E_DUPLICATE_KEY, k, 0)
        if s.expected >= 0 and not s.present & bit:
            return _fail(s, E_NOT_IN_COLUMNS, k, 0)
        seen |= bit
        row.pair[k] = at
        at = s.pos
        if _scan_string(s, &start, &length) < 0:
            return -1
        kind = UTF8_ASCII if s.ascii else _utf8_kind(s.data + start, length)
        if kind == UTF8_INVALID:
            return _fail(s, E_UTF8, 0, at)
        if kind == UTF8_ASCII:
            row.ascii |= bit
        row.start[k] = start
        row.length[k] = length
        if s.expected < 0:
            s.present_order[j] = k
    if s.expected < 0:
        s.expected = s.n_present = n_pairs
        s.present = seen
    return 0


cdef inline int _scan_end(Scan* s) noexcept nogil:
    if s.pos != s.size:
        return _fail(s, E_TRAILING, s.size - s.pos, 0)
    return 0


cdef int _raise_scan_error(const Scan* s, object opcode, tuple keys) except -1:
    cdef int e = s.error
    cdef Py_ssize_t r = s.row
    if e == E_TRUNCATED:
        raise _truncated(s.a, s.b, s.size - s.b, opcode)
    if e == E_NEGATIVE_ROWS:
        raise ProtocolError(f"negative row count {s.a}", opcode)
    if e == E_STATUS:
        raise ProtocolError(f"invalid batch status {s.a}", opcode)
    if e == E_ROW_COUNT:
        raise ProtocolError(f"row count {s.a} exceeds what {s.size - 13} body bytes can hold",
                            opcode)
    if e == E_PAIRS:
        raise ProtocolError(f"row {r}: expected {s.a} pairs, got {s.b}", opcode)
    if e == E_PAIRS_AT_MOST:
        raise ProtocolError(f"row {r}: expected at most {len(keys)} pairs, got {s.a}", opcode)
    if e == E_NEGATIVE_LENGTH:
        raise ProtocolError(f"negative string length {s.a} at offset {s.b}", opcode)
    if e == E_UNKNOWN_KEY:
        # The pure codec decodes an unknown key to name it: invalid UTF-8 fails first.
        if _utf8_kind(s.data + s.b + 4, s.a) == UTF8_INVALID:
            raise ProtocolError(f"invalid UTF-8 in string at offset {s.b}", opcode)
        key = PyUnicode_DecodeUTF8(s.data + s.b + 4, s.a, NULL)
        raise ProtocolError(f"row {r}: unknown key {key!r}", opcode)
    if e == E_DUPLICATE_KEY:
        raise ProtocolError(f"row {r}: duplicate key {keys[s.a]!r}", opcode)
    if e == E_NOT_IN_COLUMNS:
        raise ProtocolError(f"row {r}: key {keys[s.a]!r} not in the batch's columns", opcode)
    if e == E_UTF8:
        raise ProtocolError(f"invalid UTF-8 in string at offset {s.b}", opcode)
    raise ProtocolError(f"{s.a} trailing bytes after {s.n_rows} rows", opcode)


cdef enum:
    CACHE_BITS = 9
    CACHE_MAX = 8       # longest value cached, in bytes

ctypedef struct StrCache:
    # Short values repeat across a batch (amounts, ids, flags): one str per
    # distinct value, not one per row. The references are borrowed from the
    # rows being built, which outlive the cache.
    uint64_t key[1 << CACHE_BITS]
    Py_ssize_t length[1 << CACHE_BITS]      # 0: an empty slot
    PyObject* value[1 << CACHE_BITS]


cdef inline str _row_str(const Scan* s, const Row* row, int k, StrCache* cache):
    """The value of key ``k`` in the row just scanned."""
    cdef const char* p = s.data + row.start[k]
    cdef Py_ssize_t n = row.length[k]
    cdef bint ascii = row.ascii >> k & 1
    cdef uint64_t key
    cdef unsigned int slot
    cdef str value
    if not (ascii and 2 <= n <= CACHE_MAX):
        return _new_str(p, n, ascii)
    key = ff_short_key(p, n)
    slot = ff_slot(key, n, CACHE_BITS)
    if cache.length[slot] == n and cache.key[slot] == key:
        return <str>cache.value[slot]
    value = _new_str(p, n, True)
    cache.key[slot] = key
    cache.length[slot] = n
    cache.value[slot] = <PyObject*>value
    return value


cdef inline object _row_value(const Scan* s, const Row* row, int k, StrCache* cache):
    """The value of key ``k``, or None when the batch leaves that key out."""
    if not s.present >> k & 1:
        return None
    return _row_str(s, row, k, cache)


cdef enum RowType:
    ROWS_OBJECT
    ROWS_DICT
    ROWS_TUPLE


def decode_table_body(opcode, body, row_type="object", columns=None, projected=False):
    """Decode a table body (PROTOCOL.md §4) -> ``(batch_number, status, keys, rows)``."""
    cdef Py_buffer view
    _get_bytes(body, &view)
    try:
        return _decode_table(opcode, <const char*>view.buf, view.len, row_type, columns, projected)
    finally:
        PyBuffer_Release(&view)


cdef tuple _decode_table(opcode, const char* data, Py_ssize_t size, row_type, columns,
                         projected):
    cdef int picks[MAX_KEYS]
    cdef int n_picks = 0, n_keys, j, k
    cdef RowType kind
    cdef Scan s
    cdef Row row
    cdef StrCache cache
    cdef Py_ssize_t r
    cdef list rows
    spec = _table_spec(opcode)
    if row_type not in _ROW_TYPES:
        raise ValueError(f"row_type must be 'object', 'dict' or 'tuple', not {row_type!r}")
    if row_type == "tuple":
        n_picks = _column_indexes(spec, columns, picks)
    kind = ROWS_OBJECT if row_type == "object" else ROWS_TUPLE if row_type == "tuple" else ROWS_DICT
    cdef tuple keys = spec.required_keys
    cdef bint is_projection = projected
    cls = spec.row_class
    template = None
    n_keys = len(keys)
    if _scan_start(&s, &_tables[<int>spec.opcode], data, size, is_projection) < 0:
        _raise_scan_error(&s, opcode, keys)
    memset(cache.length, 0, sizeof(cache.length))
    rows = PyList_New(s.n_rows)
    for r in range(s.n_rows):
        if _scan_row(&s, &row, r) < 0:
            _raise_scan_error(&s, opcode, keys)
        if kind == ROWS_DICT:
            # Copying a dict of the batch's keys is quicker than inserting
            # each key; the keys are the table's own str objects.
            if template is None:
                template = {keys[s.present_order[j]]: None for j in range(s.n_present)}
            item = PyDict_Copy(template)
            for j in range(s.n_present):
                k = s.present_order[j]
                PyDict_SetItem(item, <object>PyTuple_GET_ITEM(keys, k),
                               _row_str(&s, &row, k, &cache))
        else:
            if kind == ROWS_OBJECT:
                item = ff_alloc_row(cls, n_keys)
                for k in range(n_keys):
                    value = _row_value(&s, &row, k, &cache)
                    Py_INCREF(value)
                    PyTuple_SET_ITEM(item, k, value)
            else:
                item = PyTuple_New(n_picks)
                for j in range(n_picks):
                    value = _row_value(&s, &row, picks[j], &cache)
                    Py_INCREF(value)
                    PyTuple_SET_ITEM(item, j, value)
            # A row of str and None can never be part of a cycle: untracked,
            # the GC never walks it. (CPython untracks such tuples itself,
            # but only exact tuples, and only once a collection walked them.)
            PyObject_GC_UnTrack(<void*>item)
        Py_INCREF(item)
        PyList_SET_ITEM(rows, r, item)
    if _scan_end(&s) < 0:
        _raise_scan_error(&s, opcode, keys)
    if not is_projection:
        present = keys
    elif s.expected < 0:
        present = ()
    else:
        present = tuple([keys[s.present_order[j]] for j in range(s.n_present)])
    return s.batch_number, s.status, present, rows


def decode_eof_body(body):
    """Decode an EOF body (PROTOCOL.md §5) -> ``(batch_number, table_type)``."""
    opcode = Opcodes.EOF
    cdef Py_buffer view
    cdef Scan s
    cdef const char* data
    cdef Py_ssize_t size, pos
    cdef int32_t n_pairs
    _get_bytes(body, &view)
    try:
        data = <const char*>view.buf
        size = view.len
        if _scan_header(&s, data, size) < 0:
            _raise_scan_error(&s, opcode, ())
        if s.n_rows != 1:
            raise ProtocolError(f"EOF: expected 1 row, got {s.n_rows}", opcode)
        if s.status != BatchStatus.EOF:
            raise ProtocolError(f"EOF: expected status 1 (EOF), got {s.status}", opcode)
        if 17 > size:
            raise _truncated(4, 13, size - 13, opcode)
        n_pairs = ff_get_i32(data + 13)
        if n_pairs != 1:
            raise ProtocolError(f"EOF: expected 1 pair, got {n_pairs}", opcode)
        key = _str_at(data, size, 17, 17, opcode, &pos)
        if key != EOF_KEY:
            raise ProtocolError(f"EOF: expected key 'table_type', got {key!r}", opcode)
        table_type = _str_at(data, size, pos, pos, opcode, &pos)
        if table_type not in TABLES_BY_NAME:
            raise ProtocolError(f"EOF: unknown table type {table_type!r}", opcode)
        if pos != size:
            raise ProtocolError(f"{size - pos} trailing bytes after 1 rows", opcode)
    finally:
        PyBuffer_Release(&view)
    return s.batch_number, TABLES_BY_NAME[table_type].name


def decode_finished_body(body):
    """Decode a FINISHED body ``[i32 agency_id]`` -> ``agency_id``."""
    cdef Py_buffer view
    _get_bytes(body, &view)
    try:
        if view.len != 4:
            raise ProtocolError(f"FINISHED body must be 4 bytes, got {view.len}", Opcodes.FINISHED)
        return ff_get_i32(<const char*>view.buf)
    finally:
        PyBuffer_Release(&view)


def decode_ack_body(opcode, body):
    """Check an ACK body (opcodes 1 and 2): it must be empty."""
    cdef Py_buffer view
    _get_bytes(body, &view)
    try:
        name = _ACK_NAMES.get(opcode)
        if name is None:
            raise ValueError(f"not an ACK opcode: {opcode!r}")
        if view.len != 0:
            raise ProtocolError(f"{name} body must be empty, got {view.len} bytes", opcode)
    finally:
        PyBuffer_Release(&view)


# -- DataBatch --------------------------------------------------------------

def decode_databatch_body(body):
    """Decode a DataBatch body (PROTOCOL.md §6)."""
    opcode = Opcodes.DATA_BATCH
    cdef Py_buffer view
    cdef const char* data
    cdef Py_ssize_t size, pos
    cdef int inner_opcode
    cdef int32_t inner_length
    _get_bytes(body, &view)
    try:
        data = <const char*>view.buf
        size = view.len
        table_ids = _u8_list_at(data, size, 0, 0, opcode, &pos)
        query_ids = _u8_list_at(data, size, pos, pos, opcode, &pos)
        if size - pos < 2:
            raise _truncated(2, pos, size - pos, opcode)
        reserved = ff_get_u16(data + pos)
        pos += 2
        if size - pos < 8:
            raise _truncated(8, pos, size - pos, opcode)
        batch_number = ff_get_i64(data + pos)
        pos += 8
        meta = _u8_dict_at(data, size, pos, pos, opcode, &pos)
        if size - pos < 2:
            raise _truncated(2, pos, size - pos, opcode)
        total_shards = ff_get_u16(data + pos)
        pos += 2
        if size - pos < 2:
            raise _truncated(2, pos, size - pos, opcode)
        shard_num = ff_get_u16(data + pos)
        pos += 2
        if size - pos < 5:
            raise _truncated(5, pos, size - pos, opcode)
        inner_opcode = <uint8_t>data[pos]
        inner_length = ff_get_i32(data + pos + 1)
    finally:
        PyBuffer_Release(&view)
    if inner_opcode == Opcodes.DATA_BATCH:
        raise ProtocolError("nested DataBatch", opcode)
    if inner_opcode > _MAX_OPCODE:
        raise ProtocolError(f"unknown opcode {inner_opcode}", opcode)
    if inner_opcode in _ACK_NAMES:
        raise ProtocolError(f"DataBatch cannot embed opcode {inner_opcode}", opcode)
    pos += 5
    if inner_length != size - pos:
        raise ProtocolError(
            f"embedded frame length {inner_length} does not match the {size - pos} bytes left",
            opcode)
    return (table_ids, query_ids, reserved, batch_number, meta, total_shards, shard_num,
            inner_opcode, pos)


cdef Py_ssize_t _put_databatch_header(Buf* b, table_ids, query_ids, reserved, batch_number,
                                      meta, total_shards, shard_num) except -1:
    """Write a DataBatch header; return where its batch number is, for patching."""
    cdef Py_ssize_t number_at
    _put_u8_list(b, table_ids)
    _put_u8_list(b, query_ids)
    _put_u16(b, <uint16_t>_check_range("u16", reserved, 0, 0xFFFF))
    number_at = b.len
    _put_i64(b, _check_range("i64", batch_number, INT64_MIN, INT64_MAX))
    _put_u8_dict(b, meta)
    _put_u16(b, <uint16_t>_check_range("u16", total_shards, 0, 0xFFFF))
    _put_u16(b, <uint16_t>_check_range("u16", shard_num, 0, 0xFFFF))
    return number_at


def encode_databatch_header(table_ids, query_ids, reserved, batch_number, meta, total_shards,
                            shard_num):
    """Encode a DataBatch body's header, everything before the embedded frame."""
    cdef Buf b = Buf(NULL, 0, 0, NULL)
    try:
        _put_databatch_header(&b, table_ids, query_ids, reserved, batch_number, meta,
                              total_shards, shard_num)
        return _bytes(&b)
    finally:
        PyMem_Free(b.data)


def check_embedded(embedded):
    """Check that ``embedded`` is one well-framed message a DataBatch may carry."""
    cdef Py_buffer view
    cdef const char* data
    _get_bytes(embedded, &view)
    try:
        data = <const char*>view.buf
        if view.len < 5 or ff_get_i32(data + 1) != view.len - 5:
            raise ValueError(
                "embedded bytes are not one well-framed message ([u8][i32 n][n bytes])")
        inner_opcode = <uint8_t>data[0]
        if inner_opcode == Opcodes.DATA_BATCH:
            raise ValueError("a DataBatch cannot embed a DataBatch")
        if not Opcodes.FINISHED <= inner_opcode <= Opcodes.EOF:
            raise ValueError(f"a DataBatch cannot embed opcode {inner_opcode}")
    finally:
        PyBuffer_Release(&view)


def encode_databatch_frame(table_ids, query_ids, reserved, batch_number, meta, total_shards,
                           shard_num, embedded):
    """Encode a whole DataBatch frame around ``embedded``, an already framed message."""
    cdef Buf b = Buf(NULL, 0, 0, NULL)
    try:
        _room(&b, 5)
        _put_databatch_header(&b, table_ids, query_ids, reserved, batch_number, meta,
                              total_shards, shard_num)
        check_embedded(embedded)
        _put_buffer(&b, embedded)
        return _frame(&b, Opcodes.DATA_BATCH)
    finally:
        PyMem_Free(b.data)


# -- encoders ---------------------------------------------------------------

cdef list _row_values(spec, row, Py_ssize_t r, list columns, const int* picks):
    """The values of a row that is not an exact dict or row-class instance (``_codec_py`` rules)."""
    cdef Py_ssize_t n = len(columns)
    if isinstance(row, spec.row_class):
        return [row[picks[j]] for j in range(n)]
    if PyDict_Check(row) or isinstance(row, Mapping):
        if len(row) != n:
            raise ValueError(f"row {r}: expected keys {list(columns)}, got {list(row)}")
        try:
            return [row[c] for c in columns]
        except KeyError as exc:
            raise ValueError(f"row {r}: missing key {exc.args[0]!r}") from None
    if isinstance(row, (tuple, list)):
        if len(row) != n:
            raise ValueError(f"row {r}: expected {n} values, got {len(row)}")
        return list(row)
    raise TypeError(f"row {r}: expected a mapping, a {spec.row_class.__name__} or a sequence, "
                    f"not {type(row).__name__}")


cdef inline bint _dict_in_order(dict row, list names, PyObject** values) noexcept:
    """Read a dict's values in one pass if its keys are ``names``, in that order.

    Its size is ``len(names)``; then ``row[name]`` would give the same values.
    """
    cdef Py_ssize_t pos = 0
    cdef PyObject* key
    cdef PyObject* name
    cdef int j = 0
    while PyDict_Next(row, &pos, &key, &values[j]):
        name = PyList_GET_ITEM(names, j)
        if key != name and not (PyUnicode_CheckExact(key) and ff_same_str(key, name)):
            return False
        j += 1
    return True


cdef int _put_row(Buf* b, const Table* t, spec, cls, row, Py_ssize_t r, list names,
                  const int* picks, int n_cols) except -1:
    """``[i32 nPairs]([key][value]) * nPairs`` of one row, in ``names`` order."""
    # Borrowed references (or ones ``held`` owns): no Python code runs
    # between reading them and writing them.
    cdef PyObject* values[MAX_KEYS]
    cdef PyObject** items
    cdef list held = None
    cdef int j, k
    cdef const char* data[MAX_KEYS]
    cdef Py_ssize_t lens[MAX_KEYS]
    cdef Py_ssize_t size
    cdef char* out
    if PyDict_CheckExact(row):
        if PyDict_GET_SIZE(row) != n_cols:
            raise ValueError(f"row {r}: expected keys {names}, got {list(row)}")
        if not _dict_in_order(row, names, values):
            try:
                held = [row[c] for c in names]
            except KeyError as exc:
                raise ValueError(f"row {r}: missing key {exc.args[0]!r}") from None
    elif type(row) is cls:
        for j in range(n_cols):
            if picks[j] >= PyTuple_GET_SIZE(row):
                raise IndexError("tuple index out of range")
            values[j] = PyTuple_GET_ITEM(row, picks[j])
    elif PyList_CheckExact(row) or PyTuple_CheckExact(row):
        if len(row) != n_cols:
            raise ValueError(f"row {r}: expected {n_cols} values, got {len(row)}")
        items = PySequence_Fast_ITEMS(row)
        for j in range(n_cols):
            values[j] = items[j]
    else:
        held = _row_values(spec, row, r, names, picks)
    if held is not None:
        for j in range(n_cols):
            values[j] = PyList_GET_ITEM(held, j)
    for j in range(n_cols):
        ff_prefetch(values[j])  # the values' headers are each a cache miss: overlap them
    # The common row, all ASCII str: sized first, then written into room made once.
    size = 4
    for j in range(n_cols):
        if not PyUnicode_Check(<object>values[j]):
            break
        data[j] = ff_ascii_data(values[j], &lens[j])
        if data[j] == NULL or lens[j] > INT32_MAX:
            break
        size += 8 + t.key_len[picks[j]] + lens[j]
    else:
        out = _room(b, size)
        ff_put_i32(out, n_cols)
        out += 4
        for j in range(n_cols):
            k = picks[j]
            ff_copy32(out, t.wire_key[k], 4 + t.key_len[k])
            out += 4 + t.key_len[k]
            ff_put_i32(out, <int32_t>lens[j])
            ff_copy32(out + 4, data[j], lens[j])
            out += 4 + lens[j]
        return 0
    _put_i32(b, n_cols)
    for j in range(n_cols):
        if not PyUnicode_Check(<object>values[j]):
            raise TypeError(f"row {r}: value of {names[j]!r} must be str, not "
                            f"{type(<object>values[j]).__name__}")
        k = picks[j]
        _put_pair(b, t.wire_key[k], 4 + t.key_len[k], values[j])
    return 0


def encode_table_frame(opcode, batch_number, status, rows, columns=None):
    """Encode a table batch frame: ``[u8 opcode][i32 len][table body]`` (PROTOCOL.md §4)."""
    cdef int picks[MAX_KEYS]
    cdef int n_cols, j
    cdef Py_ssize_t r = 0, n_rows, row_size
    cdef Buf b = Buf(NULL, 0, 0, NULL)
    cdef char* header
    spec = _table_spec(opcode)
    n_cols = _column_indexes(spec, columns, picks)
    names = [spec.required_keys[picks[j]] for j in range(n_cols)]
    cdef int64_t number = _check_range("batch_number", batch_number, INT64_MIN, INT64_MAX)
    if status not in (0, 1, 2):
        raise ValueError(f"invalid batch status {status!r}")
    n_rows = len(rows)
    if n_rows > INT32_MAX:
        raise ValueError(f"too many rows: {len(rows)}")
    cdef uint8_t status_byte = PyNumber_Index(status)   # 1.0 == 1, but it is no status byte
    cdef const Table* t = &_tables[<int>spec.opcode]
    cls = spec.row_class
    # Room for rows of 16-byte values up front; longer ones grow the buffer.
    row_size = 4
    for j in range(n_cols):
        row_size += 4 + t.key_len[picks[j]] + 4 + 16
    # The rows are written into the result bytes object itself, grown as
    # needed and shrunk at the end: no copy of the whole frame.
    b.cap = 18 + min(n_rows, MAX_BATCH_FRAME) * row_size
    b.owner = _new_bytes(NULL, b.cap)
    b.data = PyBytes_AS_STRING(<object>b.owner)
    try:
        header = _room(&b, 18)
        ff_put_i32(header + 5, <int32_t>n_rows)
        ff_put_i64(header + 9, number)
        header[17] = <char>status_byte
        if PyList_CheckExact(rows):
            # Index by index, loading rows ahead: row r+8's dict and r+4's
            # entries. The size is re-read each time: a row's __eq__ or
            # __getitem__ may change the list.
            while r < PyList_GET_SIZE(rows):
                if r + 8 < PyList_GET_SIZE(rows):
                    ff_prefetch(PyList_GET_ITEM(rows, r + 8))
                if r + 4 < PyList_GET_SIZE(rows):
                    ff_prefetch_dict(PyList_GET_ITEM(rows, r + 4))
                row = <object>PyList_GET_ITEM(rows, r)
                _put_row(&b, t, spec, cls, row, r, names, picks, n_cols)
                r += 1
        else:
            for row in rows:
                _put_row(&b, t, spec, cls, row, r, names, picks, n_cols)
                r += 1
        if b.len - 5 > INT32_MAX:
            raise ValueError(f"frame body too long: {b.len - 5} bytes")
        b.data[0] = <char>spec.opcode
        ff_put_i32(b.data + 1, <int32_t>(b.len - 5))
        _PyBytes_Resize(&b.owner, b.len)
        frame = <object>b.owner     # a new reference ...
        Py_XDECREF(b.owner)         # ... instead of the Buf's
        b.owner = NULL
        return frame
    finally:
        Py_XDECREF(b.owner)


def encode_eof_frame(batch_number, table_type):
    """Encode an EOF frame (PROTOCOL.md §5) for ``table_type``."""
    cdef Buf b = Buf(NULL, 0, 0, NULL)
    cdef char* header
    if table_type not in TABLES_BY_NAME:
        raise ValueError(f"unknown table type {table_type!r}")
    cdef int64_t number = _check_range("batch_number", batch_number, INT64_MIN, INT64_MAX)
    try:
        header = _room(&b, 22)
        ff_put_i32(header + 5, 1)
        ff_put_i64(header + 9, number)
        header[17] = BatchStatus.EOF
        ff_put_i32(header + 18, 1)
        _put_str(&b, EOF_KEY)
        if not isinstance(table_type, str):
            raise TypeError(f"string must be str, not {type(table_type).__name__}")
        _put_str(&b, table_type)
        return _frame(&b, Opcodes.EOF)
    finally:
        PyMem_Free(b.data)


def encode_finished_frame(agency_id):
    """Encode a FINISHED frame: ``[u8 3][i32 4][i32 agency_id]``."""
    cdef int32_t value = <int32_t>_check_range("agency_id", agency_id, INT32_MIN, INT32_MAX)
    cdef char out[9]
    out[0] = Opcodes.FINISHED
    ff_put_i32(out + 1, 4)
    ff_put_i32(out + 5, value)
    return PyBytes_FromStringAndSize(out, 9)


cdef int _project_rows(Scan* s, const int* picks, int n_picks, char* out,
                       Py_ssize_t* written) noexcept nogil:
    """Validate the rows of a full table body and copy the picked pairs to ``out``.

    A projected row is never longer than its source row, so ``out`` needs no
    more room than the body has.
    """
    cdef Row row
    cdef char* w = out
    cdef Py_ssize_t r, n
    cdef int j, k
    memcpy(w, s.data, 13)   # the same row count, batch number and status
    w += 13
    for r in range(s.n_rows):
        if _scan_row(s, &row, r) < 0:
            return -1
        ff_put_i32(w, n_picks)
        w += 4
        for j in range(n_picks):
            # The key and the value as they are on the wire, in one copy.
            k = picks[j]
            n = row.start[k] + row.length[k] - row.pair[k]
            ff_copy(w, s.data + row.pair[k], n)
            w += n
    if _scan_end(s) < 0:
        return -1
    written[0] = w - out
    return 0


def project_databatch(opcode, body, table_ids, query_ids, meta, total_shards, shard_num,
                      reserved=0, columns=None):
    """Validate a client table body and wrap its projection in a DataBatch frame."""
    cdef Py_buffer view
    _get_bytes(body, &view)
    try:
        return _project(opcode, &view, table_ids, query_ids, meta, total_shards, shard_num,
                        reserved, columns)
    finally:
        PyBuffer_Release(&view)


cdef object _project(opcode, const Py_buffer* view, table_ids, query_ids, meta, total_shards,
                     shard_num, reserved, columns):
    cdef int picks[MAX_KEYS]
    cdef int n_picks, rc
    cdef Buf header = Buf(NULL, 0, 0, NULL)
    cdef Py_ssize_t number_at, inner_at, body_size = 0
    cdef Scan s
    cdef PyObject* frame = NULL
    cdef char* out
    spec = _table_spec(opcode)
    n_picks = _column_indexes(spec, spec.kept_columns if columns is None else columns, picks)
    cdef const Table* t = &_tables[<int>spec.opcode]
    cdef tuple keys = spec.required_keys
    try:
        # Header arguments are checked before the body; the batch number is patched in.
        number_at = 5 + _put_databatch_header(&header, table_ids, query_ids, reserved, 0, meta,
                                              total_shards, shard_num)
        inner_at = 5 + header.len
        if _scan_start(&s, t, <const char*>view.buf, view.len, False) < 0:
            _raise_scan_error(&s, opcode, keys)
        # One output, as long as a projection can get (the whole body), shrunk at the end.
        frame = _new_bytes(NULL, inner_at + 5 + view.len)
        out = PyBytes_AS_STRING(<object>frame)
        # The caller holds the body's buffer, so its memory stays put without the GIL.
        with nogil:
            rc = _project_rows(&s, picks, n_picks, out + inner_at + 5, &body_size)
        if rc < 0:
            _raise_scan_error(&s, opcode, keys)
        if body_size > INT32_MAX:
            raise ValueError(f"frame body too long: {body_size} bytes")
        if inner_at + body_size > INT32_MAX:
            raise ValueError(f"frame body too long: {inner_at + body_size} bytes")
        out[0] = <char>Opcodes.DATA_BATCH
        ff_put_i32(out + 1, <int32_t>(inner_at + body_size))
        memcpy(out + 5, header.data, header.len)
        ff_put_i64(out + number_at, s.batch_number)
        out[inner_at] = <char>t.opcode
        ff_put_i32(out + inner_at + 1, <int32_t>body_size)
        _PyBytes_Resize(&frame, inner_at + 5 + body_size)
        return <object>frame
    finally:
        Py_XDECREF(frame)
        PyMem_Free(header.data)


# -- columns ----------------------------------------------------------------

_COLUMN_DTYPES = ("object", "float64", "int64")
cdef double _NAN = float("nan")


cdef _column_dtype(name, dtype):
    # A name, a Python type, a numpy scalar type (np.float64) or a numpy dtype.
    if isinstance(dtype, str):
        text = dtype
    elif isinstance(dtype, type):
        text = {float: "float64", int: "int64", str: "object", object: "object"}.get(
            dtype, dtype.__name__)
    else:
        text = getattr(dtype, "name", None)
    if text not in _COLUMN_DTYPES:
        raise ValueError(f"dtype of column {name!r} must be float64, int64 or object, "
                         f"not {dtype!r}")
    return text


cdef inline Py_ssize_t _digits(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Where the run of ASCII digits starting at ``i`` ends."""
    while i < n and c'0' <= p[i] <= c'9':
        i += 1
    return i


cdef bint _is_decimal(const char* p, Py_ssize_t n) noexcept:
    """Whether all of ``p[0:n]`` matches ``_codec_py._FLOAT_TEXT`` (plain decimal)."""
    cdef Py_ssize_t i = 0, end
    if i < n and (p[i] == c'+' or p[i] == c'-'):
        i += 1
    end = _digits(p, i, n)
    if end > i:
        i = end
        if i < n and p[i] == c'.':
            i = _digits(p, i + 1, n)
    else:
        if i == n or p[i] != c'.':
            return False
        end = _digits(p, i + 1, n)
        if end == i + 1:
            return False
        i = end
    if i < n and (p[i] == c'e' or p[i] == c'E'):
        i += 1
        if i < n and (p[i] == c'+' or p[i] == c'-'):
            i += 1
        end = _digits(p, i, n)
        if end == i:
            return False
        i = end
    return i == n


cdef bint _parse_int64(const char* p, Py_ssize_t n, int64_t* out) noexcept:
    """Parse all of ``p[0:n]`` as ``_codec_py._INT_TEXT`` (``[+-]?[0-9]+``), in int64 range."""
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef uint64_t limit, value = 0, digit
    if n > 0 and (p[0] == c'+' or p[0] == c'-'):
        negative = p[0] == c'-'
        i = 1
    if i == n:
        return False
    limit = <uint64_t>INT64_MAX + negative
    for i in range(i, n):
        if not c'0' <= p[i] <= c'9':
            return False
        digit = p[i] - c'0'
        if value > (limit - digit) // 10:
            return False
        value = value * 10 + digit
    out[0] = <int64_t>(0 - value) if negative else <int64_t>value
    return True


cdef _number_column(name, strings, kind, np):
    """A float64 or int64 array parsed from a column of str, as ``_codec_py`` parses it."""
    cdef Py_buffer view
    cdef Py_ssize_t r, n, n_rows = len(strings)
    cdef PyObject** slots = _object_slots(strings)
    cdef const char* p
    cdef bint ok, is_float = kind == "float64"
    array = np.empty(n_rows, dtype=kind)
    PyObject_GetBuffer(array, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        for r in range(n_rows):
            # A str's characters end with a NUL, as PyOS_string_to_double wants.
            p = ff_ascii_data(slots[r], &n)
            if p == NULL:
                ok = False
            elif n == 0 and is_float:
                (<double*>view.buf)[r] = _NAN
                ok = True
            elif is_float:
                ok = ff_simple_decimal(p, n, <double*>view.buf + r)
                if not ok and _is_decimal(p, n):
                    (<double*>view.buf)[r] = PyOS_string_to_double(p, NULL, NULL)
                    ok = True
            else:
                ok = _parse_int64(p, n, <int64_t*>view.buf + r)
            if not ok:
                raise ValueError(f"column {name!r}, row {r}: cannot parse "
                                 f"{<object>slots[r]!r} as {kind}")
    finally:
        PyBuffer_Release(&view)
    return array


cdef PyObject** _object_slots(array) except NULL:
    """The item pointers of a 1-D numpy object array that ``np.empty`` just made.

    Its address comes from ``__array_interface__`` (numpy's documented way to
    share memory), which spares the build a dependency on numpy's C headers.
    """
    address = array.__array_interface__["data"][0]
    return <PyObject**><uintptr_t>address


cdef tuple _string_columns(opcode, const char* data, Py_ssize_t size, projected, np):
    """Validate a table body as ``decode_table_body`` does (same errors) and
    return ``(keys, columns)``: the keys the rows carry and, per table key, a
    numpy object array of its values (``None`` for a key the batch leaves out).

    Values go straight into the arrays' item slots: no row object in between.
    """
    cdef Scan s
    cdef Row row
    cdef StrCache cache
    cdef Py_ssize_t r
    cdef int j, k
    cdef PyObject** slots[MAX_KEYS]
    cdef PyObject* old
    spec = _table_spec(opcode)
    cdef tuple keys = spec.required_keys
    cdef bint is_projection = projected
    if _scan_start(&s, &_tables[<int>spec.opcode], data, size, is_projection) < 0:
        _raise_scan_error(&s, opcode, keys)
    memset(cache.length, 0, sizeof(cache.length))
    # np.empty fills an object array with None; each slot's None is released
    # as its value goes in.
    columns = [np.empty(s.n_rows, dtype=object) for _ in keys]
    for k in range(len(keys)):
        slots[k] = _object_slots(columns[k])
    for r in range(s.n_rows):
        if _scan_row(&s, &row, r) < 0:
            _raise_scan_error(&s, opcode, keys)
        for j in range(s.n_present):
            k = s.present_order[j]
            value = _row_str(&s, &row, k, &cache)
            Py_INCREF(value)
            old = slots[k][r]
            slots[k][r] = <PyObject*>value
            Py_XDECREF(old)
    if _scan_end(&s) < 0:
        _raise_scan_error(&s, opcode, keys)
    if not is_projection:
        return keys, columns
    present = tuple([keys[s.present_order[j]] for j in range(s.n_present)])
    return present, [columns[k] if s.present >> k & 1 else None for k in range(len(keys))]


cdef tuple _table_batch(frame, str consumer):
    """A table frame, or a DataBatch frame embedding one -> ``(opcode, body, projected)``."""
    opcode, length = read_frame_header(frame, 0, 0x7FFFFFFF)
    view = memoryview(frame).cast("B")
    if len(view) != 5 + length:
        raise ProtocolError(f"frame length {length} does not match the {len(view) - 5} "
                            f"bytes given", opcode)
    body = view[5:]
    projected = opcode == Opcodes.DATA_BATCH
    if projected:
        header = decode_databatch_body(body)
        opcode, body = header[7], body[header[8]:]
    if opcode not in TABLES_BY_OPCODE:
        raise ProtocolError(f"{consumer} needs a table batch, got opcode {opcode}", opcode)
    return opcode, body, projected


def decode_columns(frame, columns=None, dtypes=None):
    """Decode a table frame, or a DataBatch frame embedding one, into numpy columns."""
    import numpy as np

    opcode, body, projected = _table_batch(frame, "decode_columns")
    cdef Py_buffer data
    _get_bytes(body, &data)
    try:
        keys, strings = _string_columns(opcode, <const char*>data.buf, data.len, projected, np)
    finally:
        PyBuffer_Release(&data)
    index = _KEY_INDEX[opcode]
    names = list(keys) if columns is None else list(columns)
    kinds = {name: "object" for name in names}
    for name, dtype in (dtypes or {}).items():
        if name not in kinds:
            raise ValueError(f"dtype given for column {name!r}, which is not decoded")
        kinds[name] = _column_dtype(name, dtype)
    result = {}
    for name in names:
        if name not in keys:
            raise ValueError(f"column {name!r} is not in the batch; it has {list(keys)}")
        kind = kinds[name]
        column = strings[index[name]]
        result[name] = column if kind == "object" else _number_column(name, column, kind, np)
    return result


# -- CSV to frames (the client's encoder) ----------------------------------------

cdef extern from *:
    """
    /* The bytes that end an unquoted CSV field: newline, comma and the quote (an error there). */
    static const unsigned char ff_csv_stop[256] = {[10] = 1, [44] = 1, [34] = 1};
    """
    const unsigned char ff_csv_stop[256]

cdef enum:
    CSV_EMPTY_FRAME = 18    # frame header + table header: a batch of no rows

cdef enum CsvFailure:
    CSV_QUOTE_IN_UNQUOTED = 1
    CSV_AFTER_QUOTE
    CSV_UNTERMINATED
    CSV_FIELDS              # a: the record's field count
    CSV_TOO_BIG             # a: the row's size in a frame
    CSV_UTF8
    CSV_I32                 # a value too long for its i32 length (only past a 2 GiB max_bytes)
    CSV_OVERRUN             # cannot happen: the output is sized for the worst case

ctypedef struct CsvField:
    Py_ssize_t start        # the field's text (inside the quotes of a quoted field)
    Py_ssize_t raw          # its bytes in the data (a doubled quote counts 2)
    Py_ssize_t length       # its value's bytes (a doubled quote counts 1)

ctypedef struct CsvBatch:
    # One call's state, shared by the scan (without the GIL) and its caller.
    const char* data
    Py_ssize_t size
    Py_ssize_t pos          # where the next record (or blank line) starts
    Py_ssize_t lines        # lines passed since the call's first line
    Py_ssize_t rows
    Py_ssize_t max_rows
    Py_ssize_t max_bytes
    bint check_i32              # max_bytes lets a value outgrow its i32 length
    Py_ssize_t width
    Py_ssize_t n_picks
    const Py_ssize_t* picks     # field index of each required key
    Py_ssize_t n_track          # fields whose place is kept: every one a pick can name
    CsvField* fields
    const Table* table
    Py_ssize_t overhead         # a row's bytes besides its values
    char* out
    Py_ssize_t total            # bytes of the frame so far, headers included
    Py_ssize_t cap              # bytes ``out`` holds
    int error
    Py_ssize_t error_lines      # ``lines`` at the start of the failing record
    Py_ssize_t a


cdef inline Py_ssize_t _csv_blank(const char* data, Py_ssize_t size, Py_ssize_t pos) noexcept nogil:
    """``_codec_py._blank_line``: the length of the empty line at ``pos``, else 0."""
    if data[pos] == c'\n':
        return 1
    if data[pos] == c'\r':
        if pos + 1 == size:
            return 1
        if data[pos + 1] == c'\n':
            return 2
    return 0


cdef int _csv_record(CsvBatch* c, Py_ssize_t* next_pos, Py_ssize_t* spans,
                     Py_ssize_t* n_fields) noexcept nogil:
    """``_codec_py._csv_record`` on the record at ``c.pos``: its fields' places, in one pass.

    Where field ``f < c.n_track`` is goes to ``c.fields[f]``; ``n_fields``,
    the position after the record's line end and the lines it spans come back.
    """
    cdef const char* data = c.data
    cdef Py_ssize_t size = c.size
    cdef Py_ssize_t i = c.pos, start, close, k, escaped
    cdef Py_ssize_t f = 0, newlines = 0
    cdef const char* q
    cdef unsigned char ch
    cdef CsvField* field
    while True:
        if i < size and data[i] == c'"':     # a quoted field
            i += 1
            start = i
            escaped = 0
            while True:
                q = <const char*>memchr(data + i, c'"', <size_t>(size - i))
                if q == NULL:
                    c.error = CSV_UNTERMINATED
                    return -1
                close = q - data
                for k in range(i, close):
                    newlines += data[k] == c'\n'
                if close + 1 < size and data[close + 1] == c'"':
                    escaped += 1
                    i = close + 2
                    continue
                i = close + 1
                break
            if f < c.n_track:
                field = &c.fields[f]
                field.start = start
                field.raw = i - 1 - start
                field.length = field.raw - escaped
        else:
            start = i
            while i < size and not ff_csv_stop[<unsigned char>data[i]]:
                i += 1
            if i < size and data[i] == c'"':
                c.error = CSV_QUOTE_IN_UNQUOTED
                return -1
            if f < c.n_track:
                field = &c.fields[f]
                field.start = start
                field.raw = i - start
                # "\r" before the line end, or ending the data, belongs to the line end.
                if field.raw > 0 and data[i - 1] == c'\r' and (i >= size or data[i] == c'\n'):
                    field.raw -= 1
                field.length = field.raw
        f += 1
        if i >= size:
            next_pos[0] = size
            break
        ch = <unsigned char>data[i]
        if ch == c',':
            i += 1
            continue
        if ch == c'\n':
            next_pos[0] = i + 1
            break
        if ch == c'\r' and (i + 1 == size or data[i + 1] == c'\n'):
            next_pos[0] = i + 2 if i + 1 < size else size
            break
        c.error = CSV_AFTER_QUOTE
        return -1
    n_fields[0] = f
    spans[0] = 1 + newlines
    return 0


cdef inline char* _csv_put_value(char* w, const char* p, const CsvField* field) noexcept nogil:
    """``[i32 length][value]``, each doubled quote of a quoted field copied once."""
    cdef Py_ssize_t n = field.raw, part
    cdef const char* q
    ff_put_i32(w, <int32_t>field.length)
    w += 4
    if field.raw == field.length:
        ff_copy(w, p, n)
        return w + n
    while n > 0:
        q = <const char*>memchr(p, c'"', <size_t>n)
        if q == NULL:
            memcpy(w, p, n)
            return w + n
        part = q - p + 1        # through the first quote of the pair
        memcpy(w, p, part)
        w += part
        p += part + 1           # past the second
        n -= part + 1
    return w


cdef int _csv_fill(CsvBatch* c) noexcept nogil:
    """``_codec_py.encode_csv_batch``'s loop: rows into ``c.out`` until a limit or the end."""
    cdef const char* data = c.data
    cdef Py_ssize_t size = c.size
    cdef Py_ssize_t blank, next_pos, spans, n_fields, row_size
    cdef Py_ssize_t j
    cdef const Table* t = c.table
    cdef const CsvField* field
    cdef char* w
    while c.pos < size and c.rows < c.max_rows:
        blank = _csv_blank(data, size, c.pos)
        if blank:
            c.pos += blank
            c.lines += 1
            continue
        c.error_lines = c.lines
        if _csv_record(c, &next_pos, &spans, &n_fields) < 0:
            return -1
        if n_fields != c.width:
            c.error = CSV_FIELDS
            c.a = n_fields
            return -1
        row_size = c.overhead
        for j in range(c.n_picks):
            row_size += c.fields[c.picks[j]].length
        if CSV_EMPTY_FRAME + row_size > c.max_bytes:
            c.error = CSV_TOO_BIG
            c.a = row_size
            return -1
        if c.total + row_size > c.max_bytes:
            break
        if c.total + row_size > c.cap:
            c.error = CSV_OVERRUN
            return -1
        # Doubled quotes and a "\r" before the line end are ASCII: checking the
        # text as it is in the data checks the value.
        if not ff_is_ascii(data + c.pos, next_pos - c.pos):
            for j in range(c.n_picks):
                field = &c.fields[c.picks[j]]
                if not _utf8_valid(<const unsigned char*>data + field.start, field.raw):
                    c.error = CSV_UTF8
                    return -1
        if c.check_i32:
            for j in range(c.n_picks):
                if c.fields[c.picks[j]].length > INT32_MAX:
                    c.error = CSV_I32
                    return -1
        w = c.out + c.total
        ff_put_i32(w, <int32_t>c.n_picks)
        w += 4
        for j in range(c.n_picks):
            ff_copy(w, t.wire_key[j], 4 + t.key_len[j])
            w += 4 + t.key_len[j]
            field = &c.fields[c.picks[j]]
            w = _csv_put_value(w, data + field.start, field)
        c.total += row_size
        c.rows += 1
        c.pos = next_pos
        c.lines += spans
    # Trailing blank lines belong to this batch: the data may end with them.
    while c.pos < size:
        blank = _csv_blank(data, size, c.pos)
        if not blank:
            break
        c.pos += blank
        c.lines += 1
    return 0


def encode_csv_batch(opcode, data, offset, line, picks, width, batch_number, max_rows,
                     max_bytes):
    """Encode CSV records of ``data`` from ``offset`` into one table frame."""
    cdef Py_buffer view
    cdef CsvBatch c
    cdef Py_ssize_t j, avail, bound, highest = -1
    cdef Py_ssize_t c_picks[MAX_KEYS]
    cdef PyObject* frame = NULL
    cdef int rc
    spec = _table_spec(opcode)
    for name, value in (("offset", offset), ("line", line), ("width", width),
                        ("max_rows", max_rows), ("max_bytes", max_bytes)):
        if not isinstance(value, int):
            raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if len(picks) != len(spec.required_keys) or not all(
            isinstance(p, int) and 0 <= p < width for p in picks):
        raise ValueError(f"picks must give a field below {width} for each of "
                         f"{len(spec.required_keys)} keys")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows}")
    if max_bytes < CSV_EMPTY_FRAME:
        raise ValueError(f"max_bytes must be >= {CSV_EMPTY_FRAME} (an empty batch frame), "
                         f"not {max_bytes}")
    cdef Py_ssize_t start = _offset(offset)
    cdef int64_t number = _check_range("batch_number", batch_number, INT64_MIN, INT64_MAX)
    cdef const Table* t = &_tables[<int>spec.opcode]
    # Huge values saturate: no record can have that many fields, rows or bytes.
    c.n_picks = t.n_keys
    pick_tuple = tuple(picks)
    if len(pick_tuple) != c.n_picks:    # a sequence whose length and items disagree
        raise ValueError(f"picks must give a field below {width} for each of "
                         f"{len(spec.required_keys)} keys")
    for j in range(c.n_picks):
        c_picks[j] = PyNumber_AsSsize_t(pick_tuple[j], NULL)
        if c_picks[j] > highest:
            highest = c_picks[j]
    c.picks = c_picks
    c.width = PyNumber_AsSsize_t(width, NULL)
    c.max_rows = PyNumber_AsSsize_t(max_rows, NULL)
    c.max_bytes = PyNumber_AsSsize_t(max_bytes, NULL)
    c.check_i32 = c.max_bytes > INT32_MAX
    c.table = t
    c.overhead = 4
    for j in range(t.n_keys):
        c.overhead += 4 + t.key_len[j] + 4
    c.fields = NULL
    _get_bytes(data, &view)
    try:
        c.data = <const char*>view.buf
        c.size = view.len
        c.pos = start if start < view.len else view.len
        c.lines = c.rows = 0
        c.error = 0
        c.error_lines = c.a = 0
        avail = c.size - c.pos
        # A record with n fields spans at least n - 1 bytes: a pick past
        # avail + 1 is never reached (every record fails the field count).
        c.n_track = highest + 1 if highest < avail + 2 else avail + 2
        c.fields = <CsvField*>PyMem_Malloc(c.n_track * sizeof(CsvField))
        if c.fields == NULL:
            raise MemoryError()
        # The frame never outgrows max_bytes, nor its rows' overhead plus
        # each pick's share of the data (every record takes at least one byte).
        bound = CSV_EMPTY_FRAME + (c.max_rows if c.max_rows < avail else avail) * c.overhead \
            + c.n_picks * avail
        c.cap = bound if bound < c.max_bytes else c.max_bytes
        frame = _new_bytes(NULL, c.cap)
        c.out = PyBytes_AS_STRING(<object>frame)
        c.total = CSV_EMPTY_FRAME
        # The caller holds the data's buffer, so its memory stays put without the GIL.
        with nogil:
            rc = _csv_fill(&c)
        if rc < 0:
            at = line if c.error_lines == 0 else line + c.error_lines
            if c.error == CSV_FIELDS:
                raise CsvError(f"expected {width} fields, got {c.a}", at)
            if c.error == CSV_TOO_BIG:
                raise CsvError(f"row of {c.a} bytes does not fit a {max_bytes}-byte batch", at)
            if c.error == CSV_QUOTE_IN_UNQUOTED:
                raise CsvError("quote inside an unquoted field", at)
            if c.error == CSV_AFTER_QUOTE:
                raise CsvError("unexpected character after a closing quote", at)
            if c.error == CSV_UNTERMINATED:
                raise CsvError("unterminated quoted field", at)
            if c.error == CSV_UTF8:
                raise CsvError("not UTF-8", at)
            if c.error == CSV_I32:
                raise struct.error(_I32_PACK_ERROR)
            raise SystemError("encode_csv_batch: output buffer overrun")
        if c.total - 5 > INT32_MAX:
            raise struct.error(_I32_PACK_ERROR)
        c.out[0] = <char>t.opcode
        ff_put_i32(c.out + 1, <int32_t>(c.total - 5))
        ff_put_i32(c.out + 5, <int32_t>c.rows)
        ff_put_i64(c.out + 9, number)
        c.out[17] = <char>(1 if c.pos >= c.size else 0)     # BatchStatus.EOF, CONTINUE
        if c.total != c.cap:
            _PyBytes_Resize(&frame, c.total)
        result = <object>frame
        return result, c.pos, c.rows, (line if c.lines == 0 else line + c.lines)
    finally:
        Py_XDECREF(frame)
        PyMem_Free(c.fields)
        PyBuffer_Release(&view)


# -- Arrow ------------------------------------------------------------------
#
# The Arrow C Data Interface's two structs, as its specification lays them
# out: a schema (format string, name, children) and an array (length, buffers,
# children), each with a release callback that its current owner calls once.

cdef struct ArrowSchema:
    const char* format
    const char* name
    const char* metadata
    int64_t flags
    int64_t n_children
    ArrowSchema** children
    ArrowSchema* dictionary
    void (*release)(ArrowSchema*) noexcept nogil
    void* private_data

cdef struct ArrowArray:
    int64_t length
    int64_t null_count
    int64_t offset
    int64_t n_buffers
    int64_t n_children
    const void** buffers
    ArrowArray** children
    ArrowArray* dictionary
    void (*release)(ArrowArray*) noexcept nogil
    void* private_data

cdef struct ArrowArrayStream:
    int (*get_schema)(ArrowArrayStream*, ArrowSchema*) noexcept nogil
    int (*get_next)(ArrowArrayStream*, ArrowArray*) noexcept nogil
    const char* (*get_last_error)(ArrowArrayStream*) noexcept nogil
    void (*release)(ArrowArrayStream*) noexcept nogil
    void* private_data

cdef extern from *:
    """
    /* The decoded values are shared by the batch object and every array
       exported from it; the last of them to let go frees them, on whichever
       thread the consumer releases its array. */
    #if defined(_MSC_VER)
    #  include <intrin.h>
    #  define ff_refs_inc(p) _InterlockedIncrement(p)
    #  define ff_refs_dec(p) _InterlockedDecrement(p)
    #else
    #  define ff_refs_inc(p) __atomic_add_fetch(p, 1, __ATOMIC_RELAXED)
    #  define ff_refs_dec(p) __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL)
    #endif
    static const char ff_arrow_struct_format[] = "+s";
    static const char ff_arrow_utf8_format[] = "u";

    /* n bytes copied as whole 16-byte blocks: no branch on the length of a
       short value (they vary row to row, and mispredicted branches cost more
       than the copy). The caller guarantees that d has room and that s can be
       read up to the next multiple of 16 past n. */
    static inline void ff_copy_blocks(char *d, const char *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
        do {
            memcpy(d + i, s + i, 16);
            i += 16;
        } while (i < n);
    }
    """
    long ff_refs_inc(long* refs) nogil
    long ff_refs_dec(long* refs) nogil
    void ff_copy_blocks(char* d, const char* s, Py_ssize_t n) nogil
    const char* ff_arrow_struct_format
    const char* ff_arrow_utf8_format

ctypedef struct StringColumns:
    # Per key index, an Arrow utf8 column: int32 offsets (n_rows + 1 of them)
    # and the values' UTF-8 bytes back to back; NULL for a key not decoded.
    long refs
    int32_t* offsets[MAX_KEYS]
    char* data[MAX_KEYS]
    Py_ssize_t capacity[MAX_KEYS]

ctypedef struct ChildExport:
    # What an exported column array owns: one reference to the values.
    StringColumns* columns
    const void* buffers[3]

ctypedef struct StructExport:
    # What an exported struct array owns: its children, until each is released.
    const void* buffers[1]
    ArrowArray* child_pointers[MAX_KEYS]
    ArrowArray children[MAX_KEYS]

ctypedef struct SchemaExport:
    ArrowSchema* child_pointers[MAX_KEYS]
    ArrowSchema children[MAX_KEYS]

ctypedef struct StreamExport:
    # What an exported stream owns: its column names, for each schema a
    # consumer asks for (on any thread, without the GIL), and the one array,
    # until the consumer's first get_next moves it out.
    ArrowArray array
    int n_names
    char* names[MAX_KEYS]


cdef void _columns_release(StringColumns* c) noexcept nogil:
    cdef int k
    if ff_refs_dec(&c.refs) != 0:
        return
    for k in range(MAX_KEYS):
        PyMem_RawFree(c.offsets[k])
        PyMem_RawFree(c.data[k])
    PyMem_RawFree(c)


cdef enum:
    COPY_BLOCK = 16     # ff_copy_blocks' unit: the room kept free past a column's values


cdef int _columns_start(StringColumns* c, const Scan* s, unsigned int keys) noexcept nogil:
    """Allocate the buffers of ``keys``; a column's first guess at its size is an even share."""
    cdef int k
    cdef Py_ssize_t share = (s.size - 13) // (s.n_present if s.n_present > 0 else 1) + COPY_BLOCK
    for k in range(s.table.n_keys):
        if keys >> k & 1:
            c.offsets[k] = <int32_t*>PyMem_RawMalloc((s.n_rows + 1) * sizeof(int32_t))
            c.data[k] = <char*>PyMem_RawMalloc(share)
            if c.offsets[k] == NULL or c.data[k] == NULL:
                return -1
            c.offsets[k][0] = 0
            c.capacity[k] = share
    return 0


cdef int _grow_column(StringColumns* c, int k, Py_ssize_t need) noexcept nogil:
    """Make room for ``need`` bytes in column ``k``: at least double, as lists grow."""
    cdef Py_ssize_t capacity = c.capacity[k] * 2
    cdef char* grown
    if capacity < need:
        capacity = need
    grown = <char*>PyMem_RawRealloc(c.data[k], capacity)
    if grown == NULL:
        return -1
    c.data[k] = grown
    c.capacity[k] = capacity
    return 0


cdef void _shrink_column(StringColumns* c, int k, Py_ssize_t size) noexcept nogil:
    # A failed shrink leaves the column as it was, which is as good.
    cdef char* shrunk = <char*>PyMem_RawRealloc(c.data[k], size if size > 0 else 1)
    if shrunk != NULL:
        c.data[k] = shrunk
        c.capacity[k] = size


cdef enum:
    ARROW_NO_MEMORY = -2


cdef inline int _copy_value(StringColumns* c, int k, char** data, Py_ssize_t* room,
                            Py_ssize_t at, const char* value, Py_ssize_t n,
                            bint readable) noexcept nogil:
    """Put the ``n`` bytes at ``value`` at ``at`` in column ``k``, whose buffer
    ``*data`` takes a whole copy block up to ``*room`` (both updated when it grows);
    ``readable``: a block can be read from ``value``. ARROW_NO_MEMORY if it cannot grow."""
    if at + n > room[0]:
        if _grow_column(c, k, at + n + COPY_BLOCK) < 0:
            return ARROW_NO_MEMORY
        data[0] = c.data[k]
        room[0] = c.capacity[k] - COPY_BLOCK
    if readable:
        ff_copy_blocks(data[0] + at, value, n)
    else:
        memcpy(data[0] + at, value, n)
    return 0


cdef int _scan_to_columns(Scan* s, StringColumns* c, unsigned int wanted) noexcept nogil:
    """Validate the rows after the header and append the ``wanted`` values the batch
    carries to their columns in ``c``: -1 on a scan error (in ``s``), ARROW_NO_MEMORY.

    A row after the first whose pairs come in the previous row's key order, in
    an all-ASCII body, is checked and copied in one pass (the keys' bytes,
    prefixes included, compared whole). Any other row, and any row that fails
    that pass, goes through ``_scan_row``, which names the error if there is one.
    """
    cdef const Table* t = s.table
    cdef Row row
    cdef Py_ssize_t r, at, n, start, pos
    cdef int i, j, k, n_copied = 0
    cdef bint fast
    # The columns being filled, in locals that the copies cannot alias, so the
    # compiler keeps them at hand instead of reloading them after each copy.
    cdef int copied[MAX_KEYS]               # their key indexes
    cdef int slot[MAX_KEYS]                 # by key index: its column here, or -1
    cdef char* data[MAX_KEYS]
    cdef int32_t* offsets[MAX_KEYS]
    cdef Py_ssize_t end[MAX_KEYS]           # the bytes in each
    cdef Py_ssize_t row_end[MAX_KEYS]       # ... with the row being copied
    cdef Py_ssize_t room[MAX_KEYS]          # what each can hold and still take a whole block
    cdef Py_ssize_t readable = s.size - COPY_BLOCK   # a value starting before this can be
                                                     # read a block at a time
    if s.n_rows == 0 and _columns_start(c, s, wanted & s.present) < 0:
        return ARROW_NO_MEMORY
    for r in range(s.n_rows):
        fast = False
        if r > 0 and s.ascii:
            pos = s.pos
            if s.size - pos >= 4 and ff_get_i32(s.data + pos) == s.expected:
                pos += 4
                fast = True
                for j in range(s.expected):
                    k = s.order[j]
                    n = 4 + t.key_len[k]
                    if s.size - pos < n + 4 or not ff_equal(t.wire_key[k], s.data + pos, n):
                        fast = False
                        break
                    pos += n
                    n = ff_get_i32(s.data + pos)
                    pos += 4
                    if n < 0 or n > s.size - pos:
                        fast = False
                        break
                    i = slot[k]
                    if i >= 0:
                        at = end[i]
                        if _copy_value(c, k, &data[i], &room[i], at, s.data + pos, n,
                                       pos + n <= readable) < 0:
                            return ARROW_NO_MEMORY
                        row_end[i] = at + n
                        offsets[i][r + 1] = <int32_t>(at + n)
                    pos += n
        if fast:
            s.pos = pos
            for i in range(n_copied):
                end[i] = row_end[i]
            continue
        if _scan_row(s, &row, r) < 0:
            return -1
        if r == 0:
            # A projection's first row says which keys every row carries.
            if _columns_start(c, s, wanted & s.present) < 0:
                return ARROW_NO_MEMORY
            for k in range(t.n_keys):
                slot[k] = -1
                if (wanted & s.present) >> k & 1:
                    slot[k] = n_copied
                    copied[n_copied] = k
                    data[n_copied] = c.data[k]
                    offsets[n_copied] = c.offsets[k]
                    end[n_copied] = 0
                    room[n_copied] = c.capacity[k] - COPY_BLOCK
                    n_copied += 1
        for i in range(n_copied):
            k = copied[i]
            at = end[i]
            n = row.length[k]
            start = row.start[k]
            if _copy_value(c, k, &data[i], &room[i], at, s.data + start, n,
                           start + n <= readable) < 0:
                return ARROW_NO_MEMORY
            end[i] = at + n
            # A body is at most 2**31 - 1 bytes: every offset fits an int32.
            offsets[i][r + 1] = <int32_t>(at + n)
    if _scan_end(s) < 0:
        return -1
    # Give back what the first guesses left unused: the batch may live long.
    for i in range(n_copied):
        _shrink_column(c, copied[i], end[i])
    return 0


cdef tuple _arrow_column_names(tuple keys, list requested):
    """The columns to export: the batch's keys, or those requested, checked as
    ``decode_columns`` checks them (and each at most once)."""
    if requested is None:
        return keys
    names = []
    for name in requested:
        if name not in keys:
            raise ValueError(f"column {name!r} is not in the batch; it has {list(keys)}")
        if name in names:
            raise ValueError(f"duplicate column {name!r}")
        names.append(name)
    return tuple(names)


cdef void _release_child_schema(ArrowSchema* schema) noexcept nogil:
    PyMem_RawFree(schema.private_data)      # the name
    schema.release = NULL


cdef void _release_struct_schema(ArrowSchema* schema) noexcept nogil:
    cdef SchemaExport* export = <SchemaExport*>schema.private_data
    cdef int64_t i
    for i in range(schema.n_children):
        # A consumer may have moved a child out, leaving it released here.
        if export.children[i].release != NULL:
            export.children[i].release(&export.children[i])
    PyMem_RawFree(export)
    schema.release = NULL


cdef void _release_child_array(ArrowArray* array) noexcept nogil:
    cdef ChildExport* export = <ChildExport*>array.private_data
    _columns_release(export.columns)
    PyMem_RawFree(export)
    array.release = NULL


cdef void _release_struct_array(ArrowArray* array) noexcept nogil:
    cdef StructExport* export = <StructExport*>array.private_data
    cdef int64_t i
    for i in range(array.n_children):
        if export.children[i].release != NULL:
            export.children[i].release(&export.children[i])
    PyMem_RawFree(export)
    array.release = NULL


cdef int _fill_schema(ArrowSchema* schema, char** names, int n) noexcept nogil:
    """The struct-of-utf8 schema of columns ``names``: 0, or ENOMEM (and
    ``schema`` left released)."""
    cdef SchemaExport* export = <SchemaExport*>PyMem_RawCalloc(1, sizeof(SchemaExport))
    cdef ArrowSchema* child
    cdef char* name
    cdef size_t size
    cdef int i
    if export == NULL:
        return ENOMEM
    schema.format = ff_arrow_struct_format
    schema.name = b""
    schema.metadata = NULL
    schema.flags = 0
    schema.dictionary = NULL
    schema.n_children = n
    schema.children = export.child_pointers
    schema.private_data = export
    schema.release = _release_struct_schema
    for i in range(n):
        size = strlen(names[i]) + 1
        name = <char*>PyMem_RawMalloc(size)
        if name == NULL:
            schema.n_children = i
            _release_struct_schema(schema)
            return ENOMEM
        memcpy(name, names[i], size)
        child = &export.children[i]
        child.format = ff_arrow_utf8_format
        child.name = name
        child.private_data = name
        child.release = _release_child_schema
        export.child_pointers[i] = child
    return 0


cdef int _stream_get_schema(ArrowArrayStream* stream, ArrowSchema* out) noexcept nogil:
    cdef StreamExport* export = <StreamExport*>stream.private_data
    return _fill_schema(out, export.names, export.n_names)


cdef int _stream_get_next(ArrowArrayStream* stream, ArrowArray* out) noexcept nogil:
    cdef StreamExport* export = <StreamExport*>stream.private_data
    # The batch once (moved: its buffers live behind private_data, not in the
    # struct), then a released array, which ends the stream.
    memcpy(out, &export.array, sizeof(ArrowArray))
    export.array.release = NULL
    return 0


cdef const char* _stream_get_last_error(ArrowArrayStream* stream) noexcept nogil:
    return NULL     # the only error is ENOMEM, which says it all


cdef void _release_stream(ArrowArrayStream* stream) noexcept nogil:
    cdef StreamExport* export = <StreamExport*>stream.private_data
    cdef int i
    if export.array.release != NULL:
        export.array.release(&export.array)
    for i in range(export.n_names):
        PyMem_RawFree(export.names[i])
    PyMem_RawFree(export)
    stream.release = NULL


cdef void _free_schema_capsule(object capsule) noexcept:
    cdef ArrowSchema* schema = <ArrowSchema*>PyCapsule_GetPointer(capsule, b"arrow_schema")
    # Still set when no consumer took the schema over.
    if schema.release != NULL:
        schema.release(schema)
    PyMem_RawFree(schema)


cdef void _free_array_capsule(object capsule) noexcept:
    cdef ArrowArray* array = <ArrowArray*>PyCapsule_GetPointer(capsule, b"arrow_array")
    if array.release != NULL:
        array.release(array)
    PyMem_RawFree(array)


cdef void _free_stream_capsule(object capsule) noexcept:
    cdef ArrowArrayStream* stream = <ArrowArrayStream*>PyCapsule_GetPointer(
        capsule, b"arrow_array_stream")
    if stream.release != NULL:
        stream.release(stream)
    PyMem_RawFree(stream)


cdef class ArrowBatch:
    """A decoded table batch as Arrow utf8 columns: what ``decode_arrow`` returns.

    Implements the Arrow PyCapsule interface (a struct array, one non-nullable
    utf8 child per column, and a stream of that one array), so
    ``pyarrow.record_batch(batch)``, ``polars.DataFrame(batch)`` and DuckDB
    read it without copying the values.
    """
    cdef StringColumns* _columns
    cdef int _keys[MAX_KEYS]        # each exported column's key index
    cdef readonly tuple column_names
    cdef readonly Py_ssize_t num_rows

    def __cinit__(self):
        self._columns = <StringColumns*>PyMem_RawCalloc(1, sizeof(StringColumns))
        if self._columns == NULL:
            raise MemoryError()
        self._columns.refs = 1

    def __init__(self):
        raise TypeError("ArrowBatch is made by decode_arrow")

    def __dealloc__(self):
        if self._columns != NULL:
            _columns_release(self._columns)

    def __len__(self):
        return self.num_rows

    def __repr__(self):
        return f"<ArrowBatch of {self.num_rows} rows: {', '.join(self.column_names)}>"

    def __arrow_c_schema__(self):
        """A capsule named "arrow_schema" holding the batch's ArrowSchema."""
        cdef ArrowSchema* schema = <ArrowSchema*>PyMem_RawCalloc(1, sizeof(ArrowSchema))
        if schema == NULL:
            raise MemoryError()
        try:
            self._export_schema(schema)
        except BaseException:
            PyMem_RawFree(schema)
            raise
        return PyCapsule_New(schema, b"arrow_schema", _free_schema_capsule)

    cdef int _export_schema(self, ArrowSchema* schema) except -1:
        cdef char* names[MAX_KEYS]
        encoded = [PyUnicode_AsUTF8String(name) for name in self.column_names]
        for i, raw in enumerate(encoded):
            names[i] = PyBytes_AS_STRING(raw)
        if _fill_schema(schema, names, len(encoded)) != 0:
            raise MemoryError()
        return 0

    def __arrow_c_array__(self, requested_schema=None):
        """``(schema capsule, array capsule)``: the struct array of the columns.

        ``requested_schema`` is a request the interface lets a producer decline:
        the batch always gives its own schema, which consumers check.
        """
        schema = self.__arrow_c_schema__()
        cdef ArrowArray* array = <ArrowArray*>PyMem_RawCalloc(1, sizeof(ArrowArray))
        if array == NULL:
            raise MemoryError()
        capsule = PyCapsule_New(array, b"arrow_array", _free_array_capsule)
        self._export_array(array)
        return schema, capsule

    cdef int _export_array(self, ArrowArray* array) except -1:
        cdef Py_ssize_t i, n = len(self.column_names)
        cdef StructExport* export = <StructExport*>PyMem_RawCalloc(1, sizeof(StructExport))
        cdef ChildExport* owner
        cdef ArrowArray* child
        cdef int k
        if export == NULL:
            raise MemoryError()
        array.length = self.num_rows
        array.n_buffers = 1             # the validity bitmap: none, there are no nulls
        array.buffers = export.buffers
        array.n_children = n
        array.children = export.child_pointers
        array.private_data = export
        array.release = _release_struct_array
        for i in range(n):
            owner = <ChildExport*>PyMem_RawCalloc(1, sizeof(ChildExport))
            if owner == NULL:
                array.n_children = i
                _release_struct_array(array)
                raise MemoryError()
            k = self._keys[i]
            owner.columns = self._columns
            ff_refs_inc(&self._columns.refs)
            owner.buffers[1] = self._columns.offsets[k]
            owner.buffers[2] = self._columns.data[k]
            child = &export.children[i]
            child.length = self.num_rows
            child.n_buffers = 3
            child.buffers = owner.buffers
            child.private_data = owner
            child.release = _release_child_array
            export.child_pointers[i] = child
        return 0

    def __arrow_c_stream__(self, requested_schema=None):
        """A capsule named "arrow_array_stream": a stream of this one batch,
        for consumers that read streams only (DuckDB before 2.0). The
        ``requested_schema`` is declined as in ``__arrow_c_array__``."""
        cdef ArrowArrayStream* stream = <ArrowArrayStream*>PyMem_RawCalloc(
            1, sizeof(ArrowArrayStream))
        if stream == NULL:
            raise MemoryError()
        capsule = PyCapsule_New(stream, b"arrow_array_stream", _free_stream_capsule)
        cdef StreamExport* export = <StreamExport*>PyMem_RawCalloc(1, sizeof(StreamExport))
        if export == NULL:
            raise MemoryError()
        stream.private_data = export
        stream.get_schema = _stream_get_schema
        stream.get_next = _stream_get_next
        stream.get_last_error = _stream_get_last_error
        stream.release = _release_stream
        for raw in [PyUnicode_AsUTF8String(name) for name in self.column_names]:
            export.names[export.n_names] = <char*>PyMem_RawMalloc(len(raw) + 1)
            if export.names[export.n_names] == NULL:
                raise MemoryError()
            memcpy(export.names[export.n_names], PyBytes_AS_STRING(raw), len(raw) + 1)
            export.n_names += 1
        self._export_array(&export.array)
        return capsule

    def to_pyarrow(self):
        """The batch as a ``pyarrow.RecordBatch`` (sharing its memory); needs pyarrow."""
        import pyarrow

        return pyarrow.record_batch(self)


def decode_arrow(frame, columns=None):
    """Decode a table frame, or a DataBatch frame embedding one, into Arrow utf8 columns."""
    requested = None if columns is None else list(columns)
    opcode, body, projected = _table_batch(frame, "decode_arrow")
    spec = _table_spec(opcode)
    cdef tuple keys = spec.required_keys
    cdef unsigned int wanted = 0
    cdef Py_buffer data
    cdef Scan s
    cdef int rc, i
    cdef ArrowBatch batch = ArrowBatch.__new__(ArrowBatch)
    index = _KEY_INDEX[opcode]
    if requested is None:
        wanted = (1u << len(keys)) - 1
    else:
        for name in requested:
            found = index.get(name) if isinstance(name, str) else None
            if found is not None:
                wanted |= 1u << <int>found
    _get_bytes(body, &data)
    try:
        rc = _scan_start(&s, &_tables[<int>opcode], <const char*>data.buf, data.len, projected)
        if rc == 0:
            with nogil:
                rc = _scan_to_columns(&s, batch._columns, wanted)
        if rc == ARROW_NO_MEMORY:
            raise MemoryError()
        if rc < 0:
            _raise_scan_error(&s, opcode, keys)
    finally:
        PyBuffer_Release(&data)
    if not projected:
        present = keys
    elif s.expected < 0:
        present = ()
    else:
        present = tuple([keys[s.present_order[i]] for i in range(s.n_present)])
    batch.column_names = _arrow_column_names(present, requested)
    for i, name in enumerate(batch.column_names):
        batch._keys[i] = index[name]
    batch.num_rows = s.n_rows
    return batch
