#include "json_reader.h"

#include <cctype>
#include <cstdlib>
#include <cstring>

#include "cli.h"

namespace nqcli {

const JsonValue *JsonValue::get(const std::string &key) const {
    if (kind != Object) return nullptr;
    for (const auto &m : members)
        if (m.first == key) return &m.second;
    return nullptr;
}

namespace {

class Parser {
public:
    Parser(const std::string &t, const std::string &what) : t_(t), what_(what) {}

    JsonValue document() {
        JsonValue v = value(0);
        skip_ws();
        if (i_ != t_.size()) fail("trailing characters after the JSON value");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string &msg) const {
        throw CliError(strf("%s: invalid JSON at byte %zu: %s", what_.c_str(), i_, msg.c_str()));
    }
    void skip_ws() {
        while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t' || t_[i_] == '\n' || t_[i_] == '\r')) ++i_;
    }
    bool eat(const char *word) {
        size_t n = std::strlen(word);
        if (t_.compare(i_, n, word) == 0) {
            i_ += n;
            return true;
        }
        return false;
    }
    static void put_utf8(std::string &o, unsigned cp) {
        if (cp < 0x80) {
            o += (char)cp;
        } else if (cp < 0x800) {
            o += (char)(0xc0 | (cp >> 6));
            o += (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            o += (char)(0xe0 | (cp >> 12));
            o += (char)(0x80 | ((cp >> 6) & 0x3f));
            o += (char)(0x80 | (cp & 0x3f));
        } else {
            o += (char)(0xf0 | (cp >> 18));
            o += (char)(0x80 | ((cp >> 12) & 0x3f));
            o += (char)(0x80 | ((cp >> 6) & 0x3f));
            o += (char)(0x80 | (cp & 0x3f));
        }
    }
    unsigned hex4() {
        if (i_ + 4 > t_.size()) fail("short \\u escape");
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) {
            char c = t_[i_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
            else fail("bad \\u escape");
        }
        return v;
    }
    std::string string() {
        ++i_;  // opening quote
        std::string o;
        while (true) {
            if (i_ >= t_.size()) fail("unterminated string");
            char c = t_[i_++];
            if (c == '"') return o;
            if ((unsigned char)c < 0x20) fail("control character in a string");
            if (c != '\\') {
                o += c;
                continue;
            }
            if (i_ >= t_.size()) fail("unterminated escape");
            char e = t_[i_++];
            switch (e) {
            case '"': o += '"'; break;
            case '\\': o += '\\'; break;
            case '/': o += '/'; break;
            case 'b': o += '\b'; break;
            case 'f': o += '\f'; break;
            case 'n': o += '\n'; break;
            case 'r': o += '\r'; break;
            case 't': o += '\t'; break;
            case 'u': {
                unsigned cp = hex4();
                if (cp >= 0xd800 && cp < 0xdc00 && t_.compare(i_, 2, "\\u") == 0) {
                    i_ += 2;
                    unsigned lo = hex4();
                    if (lo < 0xdc00 || lo >= 0xe000) fail("bad surrogate pair");
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                put_utf8(o, cp);
                break;
            }
            default: fail("unknown escape \\" + printable(std::string(1, e)));
            }
        }
    }
    JsonValue value(int depth) {
        if (depth > 200) fail("nesting too deep");
        skip_ws();
        if (i_ >= t_.size()) fail("unexpected end");
        JsonValue v;
        char c = t_[i_];
        if (c == '{') {
            v.kind = JsonValue::Object;
            ++i_;
            skip_ws();
            if (i_ < t_.size() && t_[i_] == '}') {
                ++i_;
                return v;
            }
            while (true) {
                skip_ws();
                if (i_ >= t_.size() || t_[i_] != '"') fail("expected a member name");
                std::string key = string();
                skip_ws();
                if (i_ >= t_.size() || t_[i_] != ':') fail("expected ':'");
                ++i_;
                v.members.emplace_back(key, value(depth + 1));
                skip_ws();
                if (i_ < t_.size() && t_[i_] == ',') { ++i_; continue; }
                if (i_ < t_.size() && t_[i_] == '}') { ++i_; return v; }
                fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.kind = JsonValue::Array;
            ++i_;
            skip_ws();
            if (i_ < t_.size() && t_[i_] == ']') {
                ++i_;
                return v;
            }
            while (true) {
                v.items.push_back(value(depth + 1));
                skip_ws();
                if (i_ < t_.size() && t_[i_] == ',') { ++i_; continue; }
                if (i_ < t_.size() && t_[i_] == ']') { ++i_; return v; }
                fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.kind = JsonValue::String;
            v.s = string();
            return v;
        }
        if (eat("true")) { v.kind = JsonValue::Bool; v.b = true; return v; }
        if (eat("false")) { v.kind = JsonValue::Bool; return v; }
        if (eat("null")) return v;
        // Number: the JSON grammar, then strtod on exactly that span.
        size_t start = i_;
        if (t_[i_] == '-') ++i_;
        size_t digits = i_;
        while (i_ < t_.size() && std::isdigit((unsigned char)t_[i_])) ++i_;
        if (i_ == digits) fail("unexpected character");
        if (i_ < t_.size() && t_[i_] == '.') {
            ++i_;
            size_t f = i_;
            while (i_ < t_.size() && std::isdigit((unsigned char)t_[i_])) ++i_;
            if (i_ == f) fail("digits expected after '.'");
        }
        if (i_ < t_.size() && (t_[i_] == 'e' || t_[i_] == 'E')) {
            ++i_;
            if (i_ < t_.size() && (t_[i_] == '+' || t_[i_] == '-')) ++i_;
            size_t e = i_;
            while (i_ < t_.size() && std::isdigit((unsigned char)t_[i_])) ++i_;
            if (i_ == e) fail("digits expected in the exponent");
        }
        v.kind = JsonValue::Number;
        v.num = std::strtod(t_.substr(start, i_ - start).c_str(), nullptr);
        return v;
    }

    const std::string &t_;
    std::string what_;
    size_t i_ = 0;
};

}  // namespace

JsonValue json_parse(const std::string &text, const std::string &what) { return Parser(text, what).document(); }

}  // namespace nqcli
