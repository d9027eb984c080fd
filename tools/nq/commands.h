// The subcommands: each lives in its own cmd_*.cpp and registers here.
#pragma once
#include <vector>

#include "cli.h"

namespace nqcli {

struct Command {
    const char *name;
    const char *summary;  // one line for 'nq help'
    const char *usage;    // the full text of 'nq help NAME'
    std::vector<OptSpec> (*specs)();
    // Returns the exit status; throws CliError on failure. --json is in args.
    int (*run)(const Args &args);
};

extern const Command kSizeCommand;
extern const Command kSynthCommand;
extern const Command kCompressCommand;
extern const Command kDecompressCommand;
extern const Command kInspectCommand;
extern const Command kRoundtripCommand;
extern const Command kBenchCommand;

}  // namespace nqcli
