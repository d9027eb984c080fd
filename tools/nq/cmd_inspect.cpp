// nq inspect: what an nq container file holds, block by block, and whether every
// archive passes its checksum and format checks.
#include <cstdio>
#include <cstring>
#include <map>

#include "commands.h"
#include "container.h"
#include "json_writer.h"
#include "pipeline.h"

namespace nqcli {
namespace {

std::vector<OptSpec> specs() { return {}; }

struct BlockReport {
    uint64_t archive_bytes = 0;
    bool valid = false;
    std::string checksum;  // ok | mismatch | unverified
    std::string status, error;
    nq_block_info info{};
};

BlockReport inspect_one(const uint8_t *p, size_t len, std::map<std::pair<uint32_t, uint32_t>, ContextPtr> &ctxs) {
    BlockReport r;
    r.archive_bytes = len;
    ArchivePeek pk = peek_archive(p, len);
    if (!pk.ok) {
        r.checksum = "unverified";
        r.status = "NQ_ERR_VERSION";
        r.error = "not a nexusquant archive (bad magic or too short)";
        return r;
    }
    nq_context *ctx = nullptr;
    try {
        auto key = std::make_pair(pk.head_dim, pk.heads);
        if (!ctxs.count(key)) ctxs[key] = reader_context(pk.head_dim, pk.heads);
        ctx = ctxs[key].get();
    } catch (const CliError &e) {
        // The header's shape is impossible: the bytes are damaged (the checksum covers it).
        r.checksum = "unverified";
        r.status = "NQ_ERR_CORRUPT";
        r.error = std::string("impossible block shape in the header: ") + e.what();
        return r;
    }
    nq_block *b = nullptr;
    nq_status st = nq_block_deserialize(ctx, p, len, &b);
    if (st != NQ_OK) {
        r.status = status_name(st);
        r.error = nq_last_error();
        r.checksum = st == NQ_ERR_CORRUPT && r.error.find("checksum") != std::string::npos ? "mismatch" : "unverified";
        return r;
    }
    BlockPtr blk(b);
    r.valid = true;
    r.checksum = "ok";
    r.info = block_info(blk.get());
    return r;
}

int run(const Args &a) {
    if (a.positional().size() != 1) throw CliError("give exactly one container FILE");
    const std::string path = a.positional()[0];
    Container c = container_read(path);
    std::map<std::pair<uint32_t, uint32_t>, ContextPtr> ctxs;
    std::vector<BlockReport> reports;
    for (const ContainerEntry &e : c.entries)
        reports.push_back(inspect_one(c.bytes.data() + e.offset, (size_t)e.length, ctxs));

    uint64_t original = 0, resident = 0, archive = 0;
    size_t failed = 0;
    for (const BlockReport &r : reports) {
        archive += r.archive_bytes;
        if (!r.valid) {
            ++failed;
            continue;
        }
        original += r.info.original_bytes;
        resident += r.info.resident_bytes;
    }
    const uint64_t file_bytes = c.bytes.size();
    const double ratio = failed ? 0.0 : (double)original / (double)file_bytes;
    const double resident_ratio = failed || !resident ? 0.0 : (double)original / (double)resident;
    for (size_t i = 0; i < reports.size(); ++i)
        if (!reports[i].valid)
            std::fprintf(stderr, "nq inspect: block %zu failed (checksum %s): %s: %s\n", i,
                         reports[i].checksum.c_str(), reports[i].status.c_str(), reports[i].error.c_str());

    if (a.has("json")) {
        JsonWriter j;
        j.begin_object().str("file", path).u64("file_bytes", file_bytes).u64("blocks", reports.size());
        j.u64("failed_blocks", failed).boolean("ok", failed == 0);
        j.u64("container_overhead_bytes", file_bytes - archive);
        j.begin_array("block_reports");
        for (size_t i = 0; i < reports.size(); ++i) {
            const BlockReport &r = reports[i];
            const nq_block_info &n = r.info;
            j.begin_object().u64("index", i).u64("archive_bytes", r.archive_bytes).str("checksum", r.checksum);
            j.boolean("valid", r.valid);
            if (!r.valid) {
                j.str("status", r.status).str("error", r.error).end_object();
                continue;
            }
            j.u64("layer", n.layer).u64("heads", n.num_heads).u64("head_dim", n.head_dim);
            j.u64("tokens_in", n.tokens_in).u64("tokens_kept", n.tokens_kept).u64("k_bits", n.k_bits);
            j.u64("v_bits", n.v_bits).str("codec", codec_name(n.codec));
            j.str("evict_mode", n.tokens_kept < n.tokens_in ? evict_mode_name(n.evict_mode) : "none");
            j.str("rope", rope_mode_name(n.rope_mode)).u64("fp16_sinks", n.fp16_sinks).u64("fp16_window", n.fp16_window);
            j.boolean("positions_per_head", n.positions_per_head != 0);
            j.i64("first_position", n.first_position).i64("last_position", n.last_position);
            j.u64("original_bytes", n.original_bytes).u64("resident_bytes", n.resident_bytes);
            j.begin_object("resident_breakdown").u64("header", n.header_bytes).u64("positions", n.position_bytes);
            j.u64("scales", n.scale_bytes).u64("codes", n.code_bytes).u64("fp16", n.fp16_bytes);
            j.u64("key_mean", n.key_mean_bytes).u64("padding", n.padding_bytes).end_object();
            j.boolean("key_centering", n.key_mean_bytes != 0);
            j.num("resident_ratio", n.ratio).num("archive_ratio", (double)n.original_bytes / (double)r.archive_bytes);
            j.end_object();
        }
        j.end_array();
        j.begin_object("totals").u64("original_bytes", original).u64("resident_bytes", resident);
        j.u64("archive_bytes", archive).u64("file_bytes", file_bytes);
        if (failed)
            j.null("ratio").null("resident_ratio");
        else
            j.num("ratio", ratio).num("resident_ratio", resident_ratio);
        j.end_object().end_object();
        std::fputs(j.text().c_str(), stdout);
        return failed ? 1 : 0;
    }

    std::printf("%s: nq container, %zu blocks, %s bytes\n\n", path.c_str(), reports.size(),
                group_digits(file_bytes).c_str());
    std::printf("%5s %5s %5s %4s %8s %8s %4s %-6s %-8s %-6s %-10s %12s %12s %7s\n", "block", "layer", "heads", "dim",
                "tokens", "kept", "K/V", "codec", "evict", "rope", "checksum", "resident", "archive", "ratio");
    for (size_t i = 0; i < reports.size(); ++i) {
        const BlockReport &r = reports[i];
        const nq_block_info &n = r.info;
        if (!r.valid) {
            std::printf("%5zu %5s %5s %4s %8s %8s %4s %-6s %-8s %-6s %-10s %12s %12s %7s   %s: %s\n", i, "?", "?", "?",
                        "?", "?", "?", "?", "?", "?", r.checksum.c_str(), "?", group_digits(r.archive_bytes).c_str(),
                        "-", r.status.c_str(), r.error.c_str());
            continue;
        }
        std::string bits = strf("%u/%u", n.k_bits, n.v_bits);
        std::printf("%5zu %5u %5u %4u %8u %8u %4s %-6s %-8s %-6s %-10s %12s %12s %6.2fx\n", i, n.layer, n.num_heads,
                    n.head_dim, n.tokens_in, n.tokens_kept, bits.c_str(), codec_name(n.codec),
                    n.tokens_kept < n.tokens_in ? evict_mode_name(n.evict_mode) : "none", rope_mode_name(n.rope_mode),
                    r.checksum.c_str(), group_digits(n.resident_bytes).c_str(), group_digits(r.archive_bytes).c_str(),
                    (double)n.original_bytes / (double)r.archive_bytes);
    }
    std::printf("\nresident bytes by section:\n%5s %8s %10s %10s %12s %10s %8s %8s\n", "block", "header", "positions",
                "scales", "codes", "fp16", "key_mean", "padding");
    for (size_t i = 0; i < reports.size(); ++i) {
        if (!reports[i].valid) continue;
        const nq_block_info &n = reports[i].info;
        std::printf("%5zu %8llu %10llu %10llu %12llu %10llu %8llu %8llu\n", i, (unsigned long long)n.header_bytes,
                    (unsigned long long)n.position_bytes, (unsigned long long)n.scale_bytes,
                    (unsigned long long)n.code_bytes, (unsigned long long)n.fp16_bytes,
                    (unsigned long long)n.key_mean_bytes, (unsigned long long)n.padding_bytes);
    }
    std::printf("\ntotals: original fp16 %s bytes, resident %s, archives %s, file %s (container framing %llu)\n",
                group_digits(original).c_str(), group_digits(resident).c_str(), group_digits(archive).c_str(),
                group_digits(file_bytes).c_str(), (unsigned long long)(file_bytes - archive));
    if (failed) {
        std::printf("%zu of %zu blocks FAILED their checks (see above); no ratio\n", failed, reports.size());
        return 1;
    }
    std::printf("ratio %.2fx (original fp16 / every byte of the file), resident %.2fx\n", ratio, resident_ratio);
    return 0;
}

}  // namespace

const Command kInspectCommand = {
    "inspect", "list the blocks of an nq container file and verify their checksums",
    "usage: nq inspect FILE [--json]\n\n"
    "For every block: layer, heads, head_dim, tokens in and kept, K/V bits, codec, eviction\n"
    "mode, RoPE mode, checksum status (a block that fails to deserialise says why), the bytes\n"
    "of its resident form by section (header, positions, scales, codes, fp16, padding) and of\n"
    "its archive form; then totals and the ratio over every byte of the file.\n"
    "Exits non-zero if any block fails its checks.\n",
    specs, run};

}  // namespace nqcli
