// nq: the command-line front end of libnexusquant.
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "commands.h"
#include "json_writer.h"

using namespace nqcli;

namespace {

const Command *const kCommands[] = {&kSizeCommand,    &kCompressCommand,  &kDecompressCommand, &kInspectCommand,
                                    &kRoundtripCommand, &kBenchCommand, &kSynthCommand};

void print_overview(FILE *f) {
    std::fprintf(f,
                 "nq %s - KV-cache compression with libnexusquant\n\n"
                 "usage: nq COMMAND [options]     (nq help COMMAND for its options)\n\n"
                 "commands:\n",
                 nq_version_string());
    for (const Command *c : kCommands) std::fprintf(f, "  %-11s %s\n", c->name, c->summary);
    std::fprintf(f,
                 "  help        this text, or 'nq help COMMAND'\n\n"
                 "Every command takes --json: stdout then carries exactly one JSON object (on failure\n"
                 "{\"error\": ..., \"status\": ...}). Errors go to stderr; the exit status is non-zero.\n"
                 "Every ratio counts every byte: fp16 bytes of K and V over all bytes written.\n"
                 "Every preset is lossy, including 'lossless' (it only means: no eviction).\n");
}

const Command *find_command(const std::string &name) {
    for (const Command *c : kCommands)
        if (name == c->name) return c;
    return nullptr;
}

bool wants_json(int argc, char **argv) {
    for (int i = 2; i < argc; ++i)
        if (std::strcmp(argv[i], "--json") == 0) return true;
    return false;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        print_overview(stderr);
        return 2;
    }
    const std::string first = argv[1];
    if (first == "--version" || first == "version") {
        std::printf("nq %d.%d.%d (libnexusquant %s)\n", NQ_VERSION_MAJOR, NQ_VERSION_MINOR, NQ_VERSION_PATCH,
                    nq_version_string());
        if (nq_version_number() != NQ_VERSION_NUMBER)
            std::fprintf(stderr, "warning: nq was built against libnexusquant %d.%d.%d\n", NQ_VERSION_MAJOR,
                         NQ_VERSION_MINOR, NQ_VERSION_PATCH);
        return 0;
    }
    if (first == "help" || first == "--help" || first == "-h") {
        if (argc >= 3) {
            const Command *c = find_command(argv[2]);
            if (!c) {
                std::fprintf(stderr, "nq: unknown command '%s'\n", argv[2]);
                return 2;
            }
            std::fputs(c->usage, stdout);
            return 0;
        }
        print_overview(stdout);
        return 0;
    }
    const Command *cmd = find_command(first);
    if (!cmd) {
        std::fprintf(stderr, "nq: unknown command '%s' (try 'nq help')\n", first.c_str());
        return 2;
    }
    const bool json = wants_json(argc, argv);
    try {
        std::vector<OptSpec> specs = cmd->specs();
        specs.push_back({"json", false});
        specs.push_back({"help", false, "h"});
        Args args(cmd->name, argc, argv, 2, specs);
        if (args.has("help")) {
            std::fputs(cmd->usage, stdout);
            return 0;
        }
        return cmd->run(args);
    } catch (const CliError &e) {
        std::fprintf(stderr, "nq %s: error: %s\n", cmd->name, e.what());
        if (json) {
            JsonWriter j;
            j.begin_object().str("error", e.what()).str("status", e.status.empty() ? "NQ_CLI_ERROR" : e.status).end_object();
            std::fputs(j.text().c_str(), stdout);
        }
        return 1;
    } catch (const std::bad_alloc &) {
        std::fprintf(stderr, "nq %s: error: out of memory\n", cmd->name);
        if (json) std::fputs("{\"error\": \"out of memory\", \"status\": \"NQ_ERR_OUT_OF_MEMORY\"}\n", stdout);
        return 1;
    }
}
