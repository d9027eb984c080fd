// A small JSON writer: objects and arrays nest, commas are placed automatically,
// strings are escaped, non-finite numbers become null (JSON has no inf/nan).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nqcli {

class JsonWriter {
public:
    JsonWriter &begin_object(const char *key = nullptr);
    JsonWriter &end_object();
    JsonWriter &begin_array(const char *key = nullptr);
    JsonWriter &end_array();
    JsonWriter &str(const char *key, const std::string &v);
    JsonWriter &num(const char *key, double v);
    // A float printed with the digits a float has ("0.64", not "0.6399999857").
    JsonWriter &flt(const char *key, float v);
    JsonWriter &u64(const char *key, uint64_t v);
    JsonWriter &i64(const char *key, int64_t v);
    JsonWriter &boolean(const char *key, bool v);
    JsonWriter &null(const char *key);
    // The document so far, with a trailing newline once the outermost value is closed.
    const std::string &text() const { return out_; }

private:
    void prefix(const char *key);
    std::string out_;
    std::vector<bool> first_;  // per open container: nothing written into it yet
};

std::string json_escape(const std::string &s);

}  // namespace nqcli
