#include "cli.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace nqcli {

std::string status_name(nq_status st) {
    std::string s = nq_status_string(st);
    size_t colon = s.find(':');
    return colon == std::string::npos ? s : s.substr(0, colon);
}

void check(nq_status st, const std::string &what) {
    if (st == NQ_OK) return;
    throw CliError(what + ": " + status_name(st) + ": " + nq_last_error(), status_name(st));
}

std::string strf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = std::vsnprintf(nullptr, 0, fmt, ap);
    va_end(ap);
    std::string out(n > 0 ? (size_t)n : 0, '\0');
    if (n > 0) std::vsnprintf(&out[0], (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return out;
}

Args::Args(const std::string &command, int argc, char **argv, int first, const std::vector<OptSpec> &specs)
    : command_(command) {
    auto find_long = [&](const std::string &n) -> const OptSpec * {
        for (const auto &s : specs)
            if (n == s.name) return &s;
        return nullptr;
    };
    auto find_short = [&](const std::string &n) -> const OptSpec * {
        for (const auto &s : specs)
            if (s.short_name && n == s.short_name) return &s;
        return nullptr;
    };
    for (int i = first; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--") {
            for (++i; i < argc; ++i) positional_.push_back(argv[i]);
            break;
        }
        const OptSpec *spec = nullptr;
        std::string value;
        bool inline_value = false;
        if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
            std::string name = a.substr(2);
            size_t eq = name.find('=');
            if (eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                inline_value = true;
            }
            spec = find_long(name);
            if (!spec) throw CliError("unknown option --" + name + " (see 'nq help " + command_ + "')");
        } else if (a.size() == 2 && a[0] == '-' && a[1] != '-' && !std::isdigit((unsigned char)a[1])) {
            spec = find_short(a.substr(1));
            if (!spec) throw CliError("unknown option " + a + " (see 'nq help " + command_ + "')");
        } else {
            positional_.push_back(a);
            continue;
        }
        const std::string name = spec->name;
        if (has(name)) throw CliError("option --" + name + " given twice");
        if (spec->takes_value) {
            if (!inline_value) {
                if (i + 1 >= argc) throw CliError("option --" + name + " needs a value");
                value = argv[++i];
            }
        } else if (inline_value) {
            throw CliError("option --" + name + " takes no value");
        }
        values_.emplace_back(name, value);
    }
}

bool Args::has(const std::string &name) const {
    for (const auto &kv : values_)
        if (kv.first == name) return true;
    return false;
}

std::string Args::str(const std::string &name, const std::string &def) const {
    for (const auto &kv : values_)
        if (kv.first == name) return kv.second;
    return def;
}

uint64_t Args::u64(const std::string &name, uint64_t def, uint64_t lo, uint64_t hi) const {
    if (!has(name)) return def;
    uint64_t v = parse_u64(str(name), "--" + name);
    if (v < lo || v > hi)
        throw CliError(strf("--%s is %llu: must be in %llu..%llu", name.c_str(), (unsigned long long)v,
                            (unsigned long long)lo, (unsigned long long)hi));
    return v;
}

double Args::real(const std::string &name, double def, double lo, double hi) const {
    if (!has(name)) return def;
    double v = parse_real(str(name), "--" + name);
    if (!(v >= lo && v <= hi)) throw CliError(strf("--%s is %g: must be in [%g, %g]", name.c_str(), v, lo, hi));
    return v;
}

void Args::require(const std::vector<std::string> &names) const {
    for (const auto &n : names)
        if (!has(n)) throw CliError("nq " + command_ + " needs --" + n + " (see 'nq help " + command_ + "')");
}

uint64_t parse_u64(const std::string &text, const std::string &what) {
    if (text.empty() || text[0] == '-' || text[0] == '+' || std::isspace((unsigned char)text[0]))
        throw CliError(what + ": '" + text + "' is not a non-negative integer");
    errno = 0;
    char *end = nullptr;
    unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (errno == ERANGE) throw CliError(what + ": '" + text + "' is too large");
    if (*end != '\0') throw CliError(what + ": '" + text + "' is not a non-negative integer");
    return v;
}

double parse_real(const std::string &text, const std::string &what) {
    if (text.empty() || std::isspace((unsigned char)text[0])) throw CliError(what + ": '" + text + "' is not a number");
    errno = 0;
    char *end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (*end != '\0' || errno == ERANGE || !std::isfinite(v))
        throw CliError(what + ": '" + text + "' is not a finite number");
    return v;
}

std::vector<uint8_t> read_file(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "rb");
    if (!f) throw CliError("cannot open '" + path + "': " + std::strerror(errno));
    std::vector<uint8_t> data;
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + n);
    bool bad = std::ferror(f) != 0;
    std::fclose(f);
    if (bad) throw CliError("error reading '" + path + "'");
    return data;
}

void write_file(const std::string &path, const void *data, size_t bytes) {
    FILE *f = std::fopen(path.c_str(), "wb");
    if (!f) throw CliError("cannot create '" + path + "': " + std::strerror(errno));
    size_t n = bytes ? std::fwrite(data, 1, bytes, f) : 0;
    bool bad = n != bytes;
    if (std::fclose(f) != 0) bad = true;
    if (bad) throw CliError("error writing '" + path + "' (disk full?)");
}

std::string printable(const std::string &s, size_t max_len) {
    std::string o;
    for (size_t i = 0; i < s.size() && i < max_len; ++i) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f) {
            o += (char)c;
        } else {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", c);
            o += b;
        }
    }
    if (s.size() > max_len) o += "...";
    return o;
}

std::string group_digits(uint64_t v) {
    std::string s = std::to_string(v), out;
    int c = 0;
    for (size_t i = s.size(); i-- > 0;) {
        out.insert(out.begin(), s[i]);
        if (++c % 3 == 0 && i > 0) out.insert(out.begin(), ',');
    }
    return out;
}

double now_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace nqcli
