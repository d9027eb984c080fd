// .npy files (NumPy format versions 1.0, 2.0 and 3.0), little-endian, C order.
//
// Read: float16 ('<f2'), float32 ('<f4'), bfloat16 (descr 'bfloat16', or raw 2-byte
// '<V2' / '|V2' when the caller says the data is bf16), int64 ('<i8') and int32
// ('<i4'). Anything else (big-endian, Fortran order, structured or other dtypes) is
// refused with a message that says what to change.
// Write: version 1.0 (2.0 when the header needs it); bf16 is written as '<V2', which
// NumPy loads as void2: view it with ml_dtypes.bfloat16.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nqcli {

enum class NpyType { F16, BF16, F32, I64, I32 };

size_t npy_type_bytes(NpyType t);
const char *npy_type_name(NpyType t);  // "f16", "bf16", "f32", "i64", "i32"

struct NpyArray {
    NpyType type = NpyType::F32;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> data;  // little-endian elements, C order
    uint64_t count() const;
};

// bf16_hint: the caller says that raw 2-byte ('V2') data is bfloat16.
NpyArray npy_read(const std::string &path, bool bf16_hint);
// Parses an in-memory .npy image (what npy_read does after reading the file).
NpyArray npy_parse(std::vector<uint8_t> bytes, const std::string &what, bool bf16_hint);

void npy_write(const std::string &path, NpyType type, const std::vector<uint64_t> &shape, const void *data);

std::string shape_string(const std::vector<uint64_t> &shape);  // "(2, 8, 16, 128)"

}  // namespace nqcli
