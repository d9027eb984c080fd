#include "npy.h"

#include <cctype>
#include <cstring>

#include "cli.h"

namespace nqcli {

size_t npy_type_bytes(NpyType t) {
    switch (t) {
    case NpyType::F16:
    case NpyType::BF16: return 2;
    case NpyType::F32:
    case NpyType::I32: return 4;
    case NpyType::I64: return 8;
    }
    return 0;
}

const char *npy_type_name(NpyType t) {
    switch (t) {
    case NpyType::F16: return "f16";
    case NpyType::BF16: return "bf16";
    case NpyType::F32: return "f32";
    case NpyType::I64: return "i64";
    case NpyType::I32: return "i32";
    }
    return "?";
}

uint64_t NpyArray::count() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
}

std::string shape_string(const std::vector<uint64_t> &shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    if (shape.size() == 1) s += ",";
    return s + ")";
}

namespace {

constexpr char kMagic[] = "\x93NUMPY";

// The header is a Python dict literal: {'descr': '<f2', 'fortran_order': False,
// 'shape': (8, 16, 128), }. This reads exactly that grammar.
struct HeaderParser {
    const std::string &h;
    const std::string &what;
    size_t i = 0;

    [[noreturn]] void fail(const std::string &msg) const {
        throw CliError(what + ": malformed .npy header (" + msg + "): " + printable(h));
    }
    void ws() {
        while (i < h.size() && std::isspace((unsigned char)h[i])) ++i;
    }
    bool peek(char c) {
        ws();
        return i < h.size() && h[i] == c;
    }
    void expect(char c) {
        if (!peek(c)) fail(std::string("expected '") + c + "'");
        ++i;
    }
    std::string quoted() {
        ws();
        if (i >= h.size() || (h[i] != '\'' && h[i] != '"')) fail("expected a string");
        char q = h[i++];
        size_t start = i;
        while (i < h.size() && h[i] != q) ++i;
        if (i >= h.size()) fail("unterminated string");
        return h.substr(start, i++ - start);
    }
    std::string word() {
        ws();
        size_t start = i;
        while (i < h.size() && std::isalpha((unsigned char)h[i])) ++i;
        return h.substr(start, i - start);
    }
    uint64_t integer() {
        ws();
        size_t start = i;
        while (i < h.size() && std::isdigit((unsigned char)h[i])) ++i;
        if (i == start) fail("expected a dimension");
        std::string digits = h.substr(start, i - start);
        // numpy may write 3L on Python 2
        if (i < h.size() && h[i] == 'L') ++i;
        return parse_u64(digits, what + ": shape");
    }
};

struct Header {
    std::string descr;
    bool fortran = false;
    std::vector<uint64_t> shape;
    bool has_descr = false, has_order = false, has_shape = false;
};

Header parse_header(const std::string &text, const std::string &what) {
    HeaderParser p{text, what};
    Header hd;
    p.expect('{');
    while (!p.peek('}')) {
        std::string key = p.quoted();
        p.expect(':');
        if (key == "descr") {
            if (p.peek('[')) throw CliError(what + ": structured dtypes are not supported (need float16/bfloat16/float32)");
            hd.descr = p.quoted();
            hd.has_descr = true;
        } else if (key == "fortran_order") {
            std::string w = p.word();
            if (w != "True" && w != "False") p.fail("fortran_order must be True or False");
            hd.fortran = w == "True";
            hd.has_order = true;
        } else if (key == "shape") {
            p.expect('(');
            while (!p.peek(')')) {
                hd.shape.push_back(p.integer());
                if (p.peek(',')) ++p.i;
                else if (!p.peek(')')) p.fail("expected ',' or ')' in the shape");
            }
            ++p.i;
            hd.has_shape = true;
        } else {
            p.fail("unknown key '" + printable(key) + "'");
        }
        if (p.peek(',')) ++p.i;
        else if (!p.peek('}')) p.fail("expected ',' or '}'");
    }
    if (!hd.has_descr || !hd.has_order || !hd.has_shape) p.fail("descr, fortran_order and shape are all required");
    return hd;
}

NpyType type_of(const std::string &raw_descr, bool bf16_hint, const std::string &what) {
    const std::string descr = printable(raw_descr);
    if (descr == "<f2") return NpyType::F16;
    if (descr == "<f4") return NpyType::F32;
    if (descr == "<i8") return NpyType::I64;
    if (descr == "<i4") return NpyType::I32;
    if (descr == "bfloat16" || descr == "<bfloat16") return NpyType::BF16;
    if (descr == "<V2" || descr == "|V2") {
        if (bf16_hint) return NpyType::BF16;
        throw CliError(what + ": dtype '" + descr +
                       "' is raw 2-byte data: if it holds bfloat16 (ml_dtypes), pass --dtype bf16");
    }
    if (!descr.empty() && descr[0] == '>')
        throw CliError(what + ": dtype '" + descr +
                       "' is big-endian: only little-endian arrays are read (save a.astype(a.dtype.newbyteorder('<')))");
    throw CliError(what + ": dtype '" + descr + "' is not supported: K/V must be float16, bfloat16 or float32 "
                   "(positions int64 or int32)");
}

}  // namespace

NpyArray npy_parse(std::vector<uint8_t> b, const std::string &what, bool bf16_hint) {
    if (b.size() < 10 || std::memcmp(b.data(), kMagic, 6) != 0) throw CliError(what + ": not a .npy file (bad magic)");
    const int major = b[6], minor = b[7];
    size_t header_len, start;
    if (major == 1) {
        header_len = (size_t)b[8] | (size_t)b[9] << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (b.size() < 12) throw CliError(what + ": truncated .npy header");
        header_len = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        start = 12;
    } else {
        throw CliError(strf("%s: .npy format version %d.%d is not supported (1.0, 2.0, 3.0 are)", what.c_str(), major,
                            minor));
    }
    if (minor != 0)
        throw CliError(strf("%s: .npy format version %d.%d is not supported (1.0, 2.0, 3.0 are)", what.c_str(), major,
                            minor));
    if (b.size() < start + header_len) throw CliError(what + ": truncated .npy header");
    // Version 3 headers are UTF-8; every key and value we accept is ASCII either way.
    std::string text(reinterpret_cast<const char *>(b.data() + start), header_len);
    Header hd = parse_header(text, what);
    NpyArray a;
    a.type = type_of(hd.descr, bf16_hint, what);
    if (hd.fortran && hd.shape.size() > 1)
        throw CliError(what + ": Fortran-order arrays are not supported (save np.ascontiguousarray(a))");
    a.shape = hd.shape;
    uint64_t n = 1;
    for (uint64_t d : a.shape) {
        if (d && n > ((uint64_t)1 << 56) / d) throw CliError(what + ": shape " + shape_string(a.shape) + " is too large");
        n *= d;
    }
    const uint64_t bytes = n * npy_type_bytes(a.type);
    const size_t off = start + header_len;
    if ((uint64_t)(b.size() - off) < bytes)
        throw CliError(strf("%s: truncated: shape %s of %s needs %llu data bytes, the file has %zu", what.c_str(),
                            shape_string(a.shape).c_str(), npy_type_name(a.type), (unsigned long long)bytes,
                            b.size() - off));
    if ((uint64_t)(b.size() - off) > bytes)
        throw CliError(strf("%s: %zu bytes after the data of shape %s", what.c_str(), (size_t)(b.size() - off - bytes),
                            shape_string(a.shape).c_str()));
    b.erase(b.begin(), b.begin() + (std::ptrdiff_t)off);
    a.data = std::move(b);
    return a;
}

NpyArray npy_read(const std::string &path, bool bf16_hint) { return npy_parse(read_file(path), path, bf16_hint); }

void npy_write(const std::string &path, NpyType type, const std::vector<uint64_t> &shape, const void *data) {
    const char *descr = "<f4";
    switch (type) {
    case NpyType::F16: descr = "<f2"; break;
    case NpyType::BF16: descr = "<V2"; break;
    case NpyType::F32: descr = "<f4"; break;
    case NpyType::I64: descr = "<i8"; break;
    case NpyType::I32: descr = "<i4"; break;
    }
    std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape_string(shape) +
                       ", }";
    // Pad with spaces so that the data starts at a multiple of 64 bytes, end with '\n'.
    size_t prefix = 10;
    size_t total = prefix + dict.size() + 1;
    if ((total + 63) / 64 * 64 - prefix > 65535) prefix = 12;
    total = prefix + dict.size() + 1;
    size_t padded = (total + 63) / 64 * 64;
    std::string header = dict + std::string(padded - total, ' ') + "\n";
    std::vector<uint8_t> out(kMagic, kMagic + 6);
    out.push_back(prefix == 10 ? 1 : 2);
    out.push_back(0);
    size_t hl = header.size();
    out.push_back((uint8_t)hl);
    out.push_back((uint8_t)(hl >> 8));
    if (prefix == 12) {
        out.push_back((uint8_t)(hl >> 16));
        out.push_back((uint8_t)(hl >> 24));
    }
    out.insert(out.end(), header.begin(), header.end());
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    const uint8_t *p = static_cast<const uint8_t *>(data);
    out.insert(out.end(), p, p + n * npy_type_bytes(type));
    write_file(path, out.data(), out.size());
}

}  // namespace nqcli
