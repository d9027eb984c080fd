// A small JSON reader, enough for a model's config.json (RFC 8259 values; \u escapes
// outside ASCII are kept as UTF-8). Errors throw CliError with the byte offset.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace nqcli {

struct JsonValue {
    enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
    bool b = false;
    double num = 0.0;
    std::string s;
    std::vector<JsonValue> items;
    std::vector<std::pair<std::string, JsonValue>> members;

    // The member called key of an object, or nullptr (also when this is not an object).
    const JsonValue *get(const std::string &key) const;
};

JsonValue json_parse(const std::string &text, const std::string &what);

}  // namespace nqcli
