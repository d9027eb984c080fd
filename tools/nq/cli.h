// What every subcommand shares: errors, argument parsing, file and number helpers.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "nexusquant.h"

namespace nqcli {

// A failure to report: main() prints it to stderr (and as {"error": ...} on stdout
// under --json) and exits with a non-zero status.
struct CliError : std::runtime_error {
    std::string status;  // "NQ_ERR_CORRUPT" for library failures, "" otherwise
    explicit CliError(const std::string &msg, std::string st = "") : std::runtime_error(msg), status(std::move(st)) {}
};

// "NQ_ERR_CORRUPT" from a status code.
std::string status_name(nq_status st);

// Throws CliError("<what>: NQ_ERR_X: <library message>") unless st is NQ_OK.
void check(nq_status st, const std::string &what);

// printf into a std::string.
std::string strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// One option a subcommand accepts: "--name VALUE" (or "--name=VALUE") when takes_value,
// else a flag "--name". short_name is an optional one-letter alias ("-o").
struct OptSpec {
    const char *name;
    bool takes_value;
    const char *short_name = nullptr;
};

class Args {
public:
    // Parses argv[first..argc). Throws CliError on an unknown option, a missing value
    // or an option given twice.
    Args(const std::string &command, int argc, char **argv, int first, const std::vector<OptSpec> &specs);

    bool has(const std::string &name) const;
    std::string str(const std::string &name, const std::string &def = "") const;
    // Integers and reals, checked against [lo, hi]; the message names the option.
    uint64_t u64(const std::string &name, uint64_t def, uint64_t lo, uint64_t hi) const;
    double real(const std::string &name, double def, double lo, double hi) const;
    const std::vector<std::string> &positional() const { return positional_; }
    const std::string &command() const { return command_; }
    // Throws unless every named option is present.
    void require(const std::vector<std::string> &names) const;

private:
    std::string command_;
    std::vector<std::pair<std::string, std::string>> values_;
    std::vector<std::string> positional_;
};

uint64_t parse_u64(const std::string &text, const std::string &what);
double parse_real(const std::string &text, const std::string &what);

std::vector<uint8_t> read_file(const std::string &path);
void write_file(const std::string &path, const void *data, size_t bytes);

// Bytes from a file made safe for a message: non-printable and non-ASCII bytes
// become \xNN, and the text is cut at max_len.
std::string printable(const std::string &s, size_t max_len = 200);

// 16,777,216,000
std::string group_digits(uint64_t v);

// Seconds since an arbitrary start, from a monotonic clock.
double now_seconds();

// Median of a non-empty sample (copied and sorted).
double median(std::vector<double> v);

}  // namespace nqcli
