#include "container.h"

#include <cstring>

#include "cli.h"

namespace nqcli {

namespace {
constexpr uint8_t kMagic[4] = {'N', 'Q', 'K', 'C'};
constexpr uint16_t kVersion = 1;

uint64_t load_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void store_le(std::vector<uint8_t> &out, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back((uint8_t)(v >> (8 * i)));
}
}  // namespace

Container container_parse(std::vector<uint8_t> b, const std::string &what) {
    if (b.size() >= 4 && std::memcmp(b.data(), "NQKA", 4) == 0)
        throw CliError(what + ": this is a single block archive, not an nq container file");
    if (b.size() < 4 || std::memcmp(b.data(), kMagic, 4) != 0)
        throw CliError(what + ": not an nq container file (bad magic)");
    if (b.size() < kContainerHeaderBytes) throw CliError(what + ": truncated: the file ends inside its header");
    const uint64_t version = load_le(b.data() + 4, 2), flags = load_le(b.data() + 6, 2);
    const uint64_t n = load_le(b.data() + 8, 4), reserved = load_le(b.data() + 12, 4);
    if (version != kVersion)
        throw CliError(strf("%s: container version %llu (this tool reads %u)", what.c_str(), (unsigned long long)version,
                            kVersion));
    if (flags || reserved) throw CliError(what + ": corrupt: reserved header bytes are not zero");
    Container c;
    uint64_t off = kContainerHeaderBytes;
    for (uint64_t i = 0; i < n; ++i) {
        if (b.size() - off < kContainerEntryBytes)
            throw CliError(strf("%s: truncated: the file ends before block %llu of %llu", what.c_str(),
                                (unsigned long long)i, (unsigned long long)n));
        uint64_t len = load_le(b.data() + off, 8);
        off += kContainerEntryBytes;
        if (len > b.size() - off)
            throw CliError(strf("%s: truncated: block %llu says %llu bytes, %llu remain", what.c_str(),
                                (unsigned long long)i, (unsigned long long)len,
                                (unsigned long long)(b.size() - off)));
        c.entries.push_back({off, len});
        off += len;
    }
    if (off != b.size())
        throw CliError(strf("%s: corrupt: %llu bytes after the last of %llu blocks", what.c_str(),
                            (unsigned long long)(b.size() - off), (unsigned long long)n));
    c.bytes = std::move(b);
    return c;
}

Container container_read(const std::string &path) { return container_parse(read_file(path), path); }

uint64_t container_write(const std::string &path, const std::vector<std::vector<uint8_t>> &archives) {
    if (archives.size() > 0xffffffffull) throw CliError("too many blocks for one container");
    std::vector<uint8_t> out(kMagic, kMagic + 4);
    store_le(out, kVersion, 2);
    store_le(out, 0, 2);
    store_le(out, archives.size(), 4);
    store_le(out, 0, 4);
    for (const auto &a : archives) {
        store_le(out, a.size(), 8);
        out.insert(out.end(), a.begin(), a.end());
    }
    write_file(path, out.data(), out.size());
    return out.size();
}

}  // namespace nqcli
