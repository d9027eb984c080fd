// The golden vectors (tests/golden, docs/FORMAT.md "Golden vectors") on the GPU
// backend: every case compressed from device memory must give the pinned resident
// image and archive bytes, and decoding on the device (the GPU's own block and, where
// the full archive is stored, the block read from it) the pinned decoded K/V.
// Skipped without a CUDA device.
#include "golden_vectors.h"
#include "gpu_test_util.h"

using namespace nqt;

namespace {

std::string hex(uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
    return b;
}

const golden::ExpectedFile &expected() {
    static golden::ExpectedFile f;
    static std::string error;
    static const bool ok = golden::read_expected(golden::dir() + "/expected.txt", &f, &error);
    if (!ok) ADD_FAILURE() << error;
    return f;
}

struct BlockFree {
    void operator()(nq_block *b) const { nq_block_free(b); }
};
using Block = std::unique_ptr<nq_block, BlockFree>;

// Decodes every kept token of a device block on the device into `dt` and returns the
// digest of the decoded K then V.
void device_decode_digest(nq_context *ctx, const nq_block *blk, nq_dtype dt, uint64_t *digest) {
    nq_block_info info{};
    info.size = sizeof info;
    ASSERT_EQ(nq_block_get_info(blk, &info), NQ_OK);
    ASSERT_EQ(info.memory, NQ_MEMORY_CUDA);
    const uint32_t K = info.tokens_kept;
    const size_t n = (size_t)info.num_heads * K * info.head_dim * golden::dtype_bytes(dt);
    DevBuf dk(n), dv(n);
    NQT_CUDA(cudaMemset(dk.p, 0xff, n));
    NQT_CUDA(cudaMemset(dv.p, 0xff, n));
    nq_kv_desc out;
    nq_kv_desc_init(&out);
    out.dtype = dt;
    out.memory = NQ_MEMORY_CUDA;
    out.num_tokens = K;
    out.k = dk.p;
    out.v = dv.p;
    nq_layout_contiguous(&out.k_layout, K, info.head_dim);
    nq_layout_contiguous(&out.v_layout, K, info.head_dim);
    ASSERT_EQ(nq_decode(ctx, blk, 0, K, &out, nullptr), NQ_OK) << nq_last_error();
    std::vector<uint8_t> k(n), v(n);
    NQT_CUDA(cudaMemcpy(k.data(), dk.p, n, cudaMemcpyDeviceToHost));
    NQT_CUDA(cudaMemcpy(v.data(), dv.p, n, cudaMemcpyDeviceToHost));
    *digest = golden::decoded_digest(k, v);
}

void expect_decodes(nq_context *ctx, const nq_block *dev_blk, const golden::Case &c, const golden::Expected &want,
                    const std::string &what) {
    for (nq_dtype dt : {NQ_DTYPE_F32, c.dtype}) {
        uint64_t dg = 0;
        device_decode_digest(ctx, dev_blk, dt, &dg);
        const uint64_t w = dt == NQ_DTYPE_F32 ? want.decoded_f32_xxh3 : want.decoded_native_xxh3;
        EXPECT_EQ(hex(dg), hex(w)) << what << ": decoded on the device to dtype " << dt;
    }
}

std::vector<uint8_t> serialize(nq_context *ctx, const nq_block *b) {
    size_t bound = 0, written = 0;
    EXPECT_EQ(nq_block_serialize_bound(b, &bound), NQ_OK);
    std::vector<uint8_t> a(bound);
    EXPECT_EQ(nq_block_serialize(ctx, b, a.data(), bound, &written), NQ_OK) << nq_last_error();
    a.resize(written);
    return a;
}

class GpuGolden : public ::testing::TestWithParam<size_t> {};

TEST_P(GpuGolden, Matches) {
    NQT_REQUIRE_DEVICE();
    const golden::Case &c = golden::cases()[GetParam()];
    const golden::Expected *want = expected().find(c.name);
    ASSERT_NE(want, nullptr) << c.name << " has no line in expected.txt";
    const bool zstd_same = expected().zstd_version == golden::zstd_version();
    const std::string what = std::string(c.name) + " on the GPU";

    const nq_config cfg = golden::config_for(c, NQ_ISA_AUTO, 1, -1), zcfg = golden::config_for(c, NQ_ISA_AUTO, 1, 3);
    nq_context *ctx = nullptr, *zctx = nullptr;
    ASSERT_EQ(nq_context_create(&cfg, &ctx), NQ_OK) << nq_last_error();
    ASSERT_EQ(nq_context_create(&zcfg, &zctx), NQ_OK) << nq_last_error();
    std::unique_ptr<nq_context, void (*)(nq_context *)> own(ctx, nq_context_free), zown(zctx, nq_context_free);

    const golden::Inputs in = golden::generate(c);
    DevBuf dk(in.k.size()), dv(in.v.size());
    NQT_CUDA(cudaMemcpy(dk.p, in.k.data(), in.k.size(), cudaMemcpyHostToDevice));
    NQT_CUDA(cudaMemcpy(dv.p, in.v.data(), in.v.size(), cudaMemcpyHostToDevice));
    const nq_kv_desc kv = golden::kv_desc_for(c, in, dk.p, dv.p, NQ_MEMORY_CUDA);
    const nq_score_desc sc = golden::scores_for(c, in);  // given scores stay in host memory
    nq_block *g = nullptr;
    ASSERT_EQ(nq_compress_kv(ctx, &kv, c.scores == golden::Scores::None ? nullptr : &sc, nullptr, &g), NQ_OK)
        << what << ": " << nq_last_error();
    Block gpu(g);

    nq_block *h = nullptr;
    ASSERT_EQ(nq_block_copy(ctx, gpu.get(), NQ_MEMORY_HOST, 0, nullptr, 0, nullptr, &h), NQ_OK) << nq_last_error();
    Block host(h);
    NQT_CUDA(cudaDeviceSynchronize());
    const void *data = nullptr;
    size_t bytes = 0;
    ASSERT_EQ(nq_block_data(host.get(), &data, &bytes), NQ_OK);
    uint64_t dg = 0;
    ASSERT_EQ(nq_block_digest(host.get(), &dg), NQ_OK);
    EXPECT_EQ(bytes, want->resident_bytes) << what << ": resident size";
    EXPECT_EQ(hex(dg), hex(want->resident_xxh3)) << what << ": resident image";

    const std::vector<uint8_t> a = serialize(ctx, host.get()), za = serialize(zctx, host.get());
    EXPECT_EQ(a.size(), want->archive_bytes) << what << ": archive size (stored sections)";
    EXPECT_EQ(hex(golden::xxh3(a.data(), a.size())), hex(want->archive_xxh3)) << what << ": archive (stored sections)";
    if (zstd_same)
        EXPECT_EQ(hex(golden::xxh3(za.data(), za.size())), hex(want->zarchive_xxh3)) << what << ": archive (zstd)";

    expect_decodes(ctx, gpu.get(), c, *want, what);

    // The stored archives, read on the host, moved to the device and decoded there.
    if (c.store_archives)
        for (bool z : {false, true}) {
            std::vector<uint8_t> file;
            ASSERT_TRUE(golden::read_hex(golden::archive_path(c, z), &file)) << golden::archive_path(c, z);
            nq_block *b = nullptr, *d = nullptr;
            ASSERT_EQ(nq_block_deserialize(ctx, file.data(), file.size(), &b), NQ_OK) << nq_last_error();
            Block back(b);
            ASSERT_EQ(nq_block_copy(ctx, back.get(), NQ_MEMORY_CUDA, 0, nullptr, 0, nullptr, &d), NQ_OK)
                << nq_last_error();
            Block dev(d);
            expect_decodes(ctx, dev.get(), c, *want, golden::archive_path(c, z));
        }
}

INSTANTIATE_TEST_SUITE_P(Golden, GpuGolden, ::testing::Range<size_t>(0, golden::cases().size()),
                         [](const ::testing::TestParamInfo<size_t> &i) {
                             return std::string(golden::cases()[i.param].name);
                         });

}  // namespace
