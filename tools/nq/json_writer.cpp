#include "json_writer.h"

#include <cmath>
#include <cstdio>

namespace nqcli {

std::string json_escape(const std::string &s) {
    std::string o = "\"";
    for (unsigned char c : s) {
        switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        case '\r': o += "\\r"; break;
        case '\t': o += "\\t"; break;
        default:
            if (c < 0x20) {
                char b[8];
                std::snprintf(b, sizeof b, "\\u%04x", c);
                o += b;
            } else {
                o += (char)c;
            }
        }
    }
    return o + "\"";
}

void JsonWriter::prefix(const char *key) {
    if (!first_.empty()) {
        if (!first_.back()) out_ += ", ";
        first_.back() = false;
    }
    if (key) out_ += json_escape(key) + ": ";
}

JsonWriter &JsonWriter::begin_object(const char *key) {
    prefix(key);
    out_ += "{";
    first_.push_back(true);
    return *this;
}

JsonWriter &JsonWriter::end_object() {
    out_ += "}";
    first_.pop_back();
    if (first_.empty()) out_ += "\n";
    return *this;
}

JsonWriter &JsonWriter::begin_array(const char *key) {
    prefix(key);
    out_ += "[";
    first_.push_back(true);
    return *this;
}

JsonWriter &JsonWriter::end_array() {
    out_ += "]";
    first_.pop_back();
    if (first_.empty()) out_ += "\n";
    return *this;
}

JsonWriter &JsonWriter::str(const char *key, const std::string &v) {
    prefix(key);
    out_ += json_escape(v);
    return *this;
}

JsonWriter &JsonWriter::num(const char *key, double v) {
    prefix(key);
    if (!std::isfinite(v)) {
        out_ += "null";
        return *this;
    }
    char b[40];
    std::snprintf(b, sizeof b, "%.10g", v);
    out_ += b;
    return *this;
}

JsonWriter &JsonWriter::flt(const char *key, float v) {
    prefix(key);
    if (!std::isfinite(v)) {
        out_ += "null";
        return *this;
    }
    char b[40];
    std::snprintf(b, sizeof b, "%.7g", (double)v);
    out_ += b;
    return *this;
}

JsonWriter &JsonWriter::u64(const char *key, uint64_t v) {
    prefix(key);
    out_ += std::to_string(v);
    return *this;
}

JsonWriter &JsonWriter::i64(const char *key, int64_t v) {
    prefix(key);
    out_ += std::to_string(v);
    return *this;
}

JsonWriter &JsonWriter::boolean(const char *key, bool v) {
    prefix(key);
    out_ += v ? "true" : "false";
    return *this;
}

JsonWriter &JsonWriter::null(const char *key) {
    prefix(key);
    out_ += "null";
    return *this;
}

}  // namespace nqcli
