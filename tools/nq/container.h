// The nq container file: the archive forms of a cache's blocks (one per layer) in one
// file. docs/FORMAT.md, section "nq container file", describes the bytes:
//   0   4  magic "NQKC"
//   4   2  version (1)
//   6   2  flags (0)
//   8   4  number of blocks n
//   12  4  reserved (0)
//   16     n times: u64 archive length L, then L bytes of archive (nq_block_serialize)
// The file ends exactly after the last archive. Each archive carries its own XXH3-64.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nqcli {

constexpr size_t kContainerHeaderBytes = 16;
constexpr size_t kContainerEntryBytes = 8;

struct ContainerEntry {
    uint64_t offset;  // of the archive bytes in the file
    uint64_t length;
};

struct Container {
    std::vector<uint8_t> bytes;  // the whole file
    std::vector<ContainerEntry> entries;
};

// Reads and checks the framing (not the archives: nq_block_deserialize does that).
Container container_read(const std::string &path);
Container container_parse(std::vector<uint8_t> bytes, const std::string &what);

// Writes the archives; returns the file's size in bytes.
uint64_t container_write(const std::string &path, const std::vector<std::vector<uint8_t>> &archives);

}  // namespace nqcli
