// Token eviction through the API: sinks (positions below sink_tokens) and the recent
// window always stay, exactly the planned count is kept, positions are the true
// original ones in increasing order, and the rest is the reference top-k of the scores
// (given, key-norm proxy, attention of the last queries over GQA heads) computed here.
// Head-shared mode keeps one set for every head; paged mode keeps whole pages.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

#include "api_harness.h"

using namespace nqt;

namespace {

struct EvictCase {
    uint32_t H, T, D;
    float evict;
    int32_t sinks, window, fp16_sinks, fp16_window;
    std::vector<int64_t> positions;
};

EvictCase random_setup(uint32_t H, uint32_t T, uint32_t D) {
    EvictCase s{H, T, D, (float)uniform(0.05, 0.95), (int32_t)below(9), (int32_t)below(41), 0, 0, {}};
    s.fp16_sinks = (int32_t)below((uint32_t)s.sinks + 1);
    s.fp16_window = (int32_t)below((uint32_t)s.window + 1);
    // positions: from 0, from a small offset (fewer sinks), or with gaps
    int64_t p = below(3) == 0 ? (int64_t)below(6) : 0;
    const bool gaps = below(2);
    for (uint32_t i = 0; i < T; ++i) {
        s.positions.push_back(p);
        p += gaps ? 1 + below(5) : 1;
    }
    return s;
}

nq_config config_of(const EvictCase &s, nq_evict_mode mode) {
    nq_config c = plain_config(s.H, s.D, 2, 2);
    c.evict_fraction = s.evict;
    c.evict_mode = mode;
    c.sink_tokens = s.sinks;
    c.recent_window = s.window;
    c.fp16_sinks = s.fp16_sinks;
    c.fp16_window = s.fp16_window;
    return c;
}

// The budget of the header's rules: sinks are the tokens at positions < sink_tokens,
// the window the last recent_window tokens, and floor(evict * T) tokens go (never
// the sinks or the window, and at least one token stays).
struct Budget {
    uint32_t sinks, window, keep;
};
Budget ref_budget(const EvictCase &s) {
    Budget b{};
    while (b.sinks < s.T && s.positions[b.sinks] < s.sinks) ++b.sinks;
    b.window = std::min<uint32_t>((uint32_t)s.window, s.T - b.sinks);
    const uint32_t evict = (uint32_t)std::floor((double)s.evict * s.T);
    b.keep = std::max({s.T - std::min(evict, s.T), b.sinks + b.window, 1u});
    b.keep = std::min(b.keep, s.T);
    return b;
}

// Reference selection: sinks, window, and the best m candidates by score (higher
// first, ties to the earlier token, NaN last). Returns token indices, increasing.
std::vector<uint32_t> ref_select(const Budget &b, uint32_t T, const std::vector<double> &score) {
    std::vector<uint32_t> cand;
    for (uint32_t t = b.sinks; t < T - b.window; ++t) cand.push_back(t);
    std::stable_sort(cand.begin(), cand.end(), [&](uint32_t x, uint32_t y) {
        const double a = score[x], c = score[y];
        if (std::isnan(a) != std::isnan(c)) return std::isnan(c);
        if (std::isnan(a)) return false;
        return a > c;
    });
    const uint32_t m = b.keep - b.sinks - b.window;
    std::vector<uint32_t> kept(cand.begin(), cand.begin() + m);
    for (uint32_t t = 0; t < b.sinks; ++t) kept.push_back(t);
    for (uint32_t t = T - b.window; t < T; ++t) kept.push_back(t);
    std::sort(kept.begin(), kept.end());
    return kept;
}

std::vector<int64_t> to_positions(const std::vector<uint32_t> &idx, const std::vector<int64_t> &pos) {
    std::vector<int64_t> p;
    for (uint32_t t : idx) p.push_back(pos[t]);
    return p;
}

uint32_t index_of(const std::vector<int64_t> &pos, int64_t p) {
    return (uint32_t)(std::lower_bound(pos.begin(), pos.end(), p) - pos.begin());
}

// The kept set agrees with the reference except among near-tied scores: every kept
// candidate scores at least the threshold (the m-th best), every evicted one at most,
// within a relative tolerance for the library's float arithmetic.
::testing::AssertionResult agrees_up_to_ties(const Budget &b, uint32_t T, const std::vector<double> &score,
                                             const std::vector<int64_t> &got_pos, const std::vector<int64_t> &pos,
                                             double rel_tol) {
    std::vector<uint32_t> want = ref_select(b, T, score);
    std::set<uint32_t> got;
    for (int64_t p : got_pos) got.insert(index_of(pos, p));
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "kept " << got.size() << " want " << want.size();
    for (uint32_t t = 0; t < b.sinks; ++t)
        if (!got.count(t)) return ::testing::AssertionFailure() << "sink " << t << " evicted";
    for (uint32_t t = T - b.window; t < T; ++t)
        if (!got.count(t)) return ::testing::AssertionFailure() << "window token " << t << " evicted";
    const uint32_t m = b.keep - b.sinks - b.window;
    if (m == 0 || m == T - b.sinks - b.window) return ::testing::AssertionSuccess();
    std::vector<double> cand;
    for (uint32_t t = b.sinks; t < T - b.window; ++t) cand.push_back(score[t]);
    std::sort(cand.begin(), cand.end(), std::greater<double>());
    const double thr = cand[m - 1], scale = std::max(std::fabs(cand.front()), std::fabs(cand.back()));
    const double tol = rel_tol * scale;
    int mismatches = 0;
    for (uint32_t t = b.sinks; t < T - b.window; ++t) {
        if (got.count(t) && score[t] < thr - tol)
            return ::testing::AssertionFailure() << "kept token " << t << " scores " << score[t] << " < " << thr;
        if (!got.count(t) && score[t] > thr + tol)
            return ::testing::AssertionFailure() << "evicted token " << t << " scores " << score[t] << " > " << thr;
        mismatches += got.count(t) != (size_t)std::count(want.begin(), want.end(), t);
    }
    if (mismatches > 4) return ::testing::AssertionFailure() << mismatches << " tokens differ from the reference";
    return ::testing::AssertionSuccess();
}

// Every decoded row is closest to the input token its position names (rather than to
// its neighbours): the block's positions say which token each row holds.
void expect_rows_match_tokens(nq_context *ctx, const nq_block *b, const Values &K, const std::vector<int64_t> &pos) {
    Decoded d = decode_all(ctx, b);
    nq_block_info info = info_of(b);
    for (uint32_t h = 0; h < info.num_heads; ++h) {
        std::vector<int64_t> p = positions_of(b, h);
        for (uint32_t j = 0; j < info.tokens_kept; ++j) {
            const uint32_t t = index_of(pos, p[j]);
            ASSERT_EQ(pos[t], p[j]) << "position not an input position";
            auto err = [&](uint32_t u) {
                double e = 0;
                for (uint32_t x = 0; x < info.head_dim; ++x) e += std::pow(K.at(h, u, x) - d.k.at(h, j, x), 2);
                return e;
            };
            const double own = err(t);
            for (uint32_t u : {t + 1, t + 7, t + 31})
                if (u < K.T) {
                    ASSERT_LT(own, err(u)) << "head " << h << " row " << j << " holds another token";
                }
        }
    }
}

struct Input {
    std::unique_ptr<Tensor> k, v;
    Values K, V;
    nq_kv_desc kv;
};

Input make_input(const EvictCase &s, Layout lay = Layout::HTD, uint32_t page = 16) {
    Input in;
    in.k.reset(new Tensor(NQ_DTYPE_F16, lay, s.H, s.T, s.D, page));
    in.v.reset(new Tensor(NQ_DTYPE_F16, lay, s.H, s.T, s.D, page));
    in.K = random_values(s.H, s.T, s.D, Dist::Gauss, uniform(0.5, 2));
    in.V = random_values(s.H, s.T, s.D);
    store(*in.k, in.K);
    store(*in.v, in.V);
    in.kv = kv_desc(*in.k, *in.v, s.T);
    in.kv.positions = s.positions.data();
    return in;
}

}  // namespace

TEST(Eviction, GivenScoresPerHeadKeepTheTopK) {
    for (int rep = 0; rep < 40; ++rep) {
        EvictCase s = random_setup(1 + below(4), 20 + below(200), 16);
        nq_config c = config_of(s, NQ_EVICT_PER_HEAD);
        if (rep % 2) c.rope.mode = NQ_ROPE_REMOVE;  // decode rotates each head's rows at their own positions
        Ctx ctx = make_ctx(c);
        ASSERT_TRUE(ctx);
        Input in = make_input(s, rep % 2 ? Layout::THD : Layout::HTD);
        // scores in a [token][head] array: strides transposed
        std::vector<float> sc((size_t)s.H * s.T);
        for (float &x : sc) x = (float)uniform(-1, 1);
        nq_score_desc d;
        nq_score_desc_init(&d);
        d.kind = NQ_SCORES_GIVEN;
        d.scores = sc.data();
        d.score_stride_head = 1;
        d.score_stride_token = s.H;
        size_t bound = 0;
        ASSERT_EQ(nq_compress_bound(ctx.get(), &in.kv, &bound), NQ_OK);
        Block b = compress(ctx.get(), in.kv, &d);
        ASSERT_TRUE(b);
        const Budget bu = ref_budget(s);
        nq_block_info info = info_of(b.get());
        EXPECT_EQ(info.tokens_kept, bu.keep) << "evict " << s.evict << " T " << s.T;
        EXPECT_EQ(info.resident_bytes, bound);
        EXPECT_EQ(info.positions_per_head, bu.keep < s.T ? 1u : 0u);
        for (uint32_t h = 0; h < s.H; ++h) {
            std::vector<double> score(s.T);
            for (uint32_t t = 0; t < s.T; ++t) score[t] = sc[(size_t)t * s.H + h];
            std::vector<int64_t> got = positions_of(b.get(), h);
            EXPECT_TRUE(std::is_sorted(got.begin(), got.end()) &&
                        std::adjacent_find(got.begin(), got.end()) == got.end());
            EXPECT_EQ(got, to_positions(ref_select(bu, s.T, score), s.positions)) << "head " << h;
        }
        expect_rows_match_tokens(ctx.get(), b.get(), in.K, s.positions);
    }
}

// Equal scores go to the earlier token; NaN scores rank below every number.
TEST(Eviction, TiesGoToTheEarlierTokenAndNaNRanksLast) {
    EvictCase s = random_setup(2, 120, 8);
    s.evict = 0.5f;
    Ctx ctx = make_ctx(config_of(s, NQ_EVICT_PER_HEAD));
    Input in = make_input(s);
    std::vector<float> sc((size_t)s.H * s.T);
    for (size_t i = 0; i < sc.size(); ++i) sc[i] = below(5) == 0 ? NAN : (float)below(3);
    nq_score_desc d;
    nq_score_desc_init(&d);
    d.kind = NQ_SCORES_GIVEN;
    d.scores = sc.data();
    d.score_stride_head = s.T;
    d.score_stride_token = 1;
    Block b = compress(ctx.get(), in.kv, &d);
    ASSERT_TRUE(b);
    const Budget bu = ref_budget(s);
    for (uint32_t h = 0; h < s.H; ++h) {
        std::vector<double> score(sc.begin() + h * s.T, sc.begin() + (h + 1) * s.T);
        EXPECT_EQ(positions_of(b.get(), h), to_positions(ref_select(bu, s.T, score), s.positions));
    }
}

TEST(Eviction, HeadSharedKeepsOneSetForEveryHead) {
    for (int rep = 0; rep < 20; ++rep) {
        EvictCase s = random_setup(2 + below(4), 30 + below(150), 16);
        Ctx ctx = make_ctx(config_of(s, NQ_EVICT_HEAD_SHARED));
        Input in = make_input(s, Layout::PagedNHD);
        // multiples of 1/64: sums over heads are exact in any order
        std::vector<float> sc((size_t)s.H * s.T);
        for (float &x : sc) x = (float)below(4096) / 64.0f;
        nq_score_desc d;
        nq_score_desc_init(&d);
        d.kind = NQ_SCORES_GIVEN;
        d.scores = sc.data();
        d.score_stride_head = s.T;
        d.score_stride_token = 1;
        Block b = compress(ctx.get(), in.kv, &d);
        ASSERT_TRUE(b);
        const Budget bu = ref_budget(s);
        std::vector<double> sum(s.T, 0.0);
        for (uint32_t h = 0; h < s.H; ++h)
            for (uint32_t t = 0; t < s.T; ++t) sum[t] += sc[(size_t)h * s.T + t];
        const std::vector<int64_t> want = to_positions(ref_select(bu, s.T, sum), s.positions);
        nq_block_info info = info_of(b.get());
        EXPECT_EQ(info.tokens_kept, bu.keep);
        EXPECT_EQ(info.positions_per_head, 0u);
        for (uint32_t h = 0; h < s.H; ++h) EXPECT_EQ(positions_of(b.get(), h), want) << "head " << h;
        expect_rows_match_tokens(ctx.get(), b.get(), in.K, s.positions);
    }
}

// Paged mode keeps whole pages: the pages with sinks, the pages the window touches and
// the partial last page, plus the best pages by mean score; the kept count is planned
// exactly before any score is read.
TEST(Eviction, PagedKeepsWholePages) {
    for (int rep = 0; rep < 60; ++rep) {
        EvictCase s = random_setup(1 + below(3), 10 + below(200), 8);
        for (size_t i = 0; i < s.positions.size(); ++i) s.positions[i] = (int64_t)i;  // pages are token ranges
        if (rep % 3 == 0) s.window = 0;
        if (rep % 4 == 0) s.sinks = 0;
        s.fp16_sinks = std::min(s.fp16_sinks, s.sinks);
        s.fp16_window = std::min(s.fp16_window, s.window);
        const uint32_t P = rep % 2 ? 16 : 1 + below(20);
        nq_config c = config_of(s, NQ_EVICT_PAGED);
        c.evict_page_size = rep % 2 ? 0 : P;  // 0: the paged input's page size
        Ctx ctx = make_ctx(c);
        Input in = make_input(s, rep % 2 ? Layout::PagedHND : Layout::HTD, 16);
        std::vector<float> sc((size_t)s.H * s.T);
        for (float &x : sc) x = (float)below(4096) / 64.0f;
        nq_score_desc d;
        nq_score_desc_init(&d);
        d.kind = NQ_SCORES_GIVEN;
        d.scores = sc.data();
        d.score_stride_head = s.T;
        d.score_stride_token = 1;
        size_t bound = 0;
        ASSERT_EQ(nq_compress_bound(ctx.get(), &in.kv, &bound), NQ_OK);
        nq_block *raw = nullptr;
        ASSERT_EQ(nq_compress_kv(ctx.get(), &in.kv, &d, nullptr, &raw), NQ_OK)
            << nq_last_error() << " (T " << s.T << " page " << P << " sinks " << s.sinks << " window " << s.window
            << " evict " << s.evict << ")";
        Block b(raw);
        EXPECT_EQ(info_of(b.get()).resident_bytes, bound);

        // Reference: forced pages, then whole free pages by mean score until the budget.
        const Budget bu = ref_budget(s);
        const uint32_t pages = (s.T + P - 1) / P;
        std::vector<bool> forced(pages, false);
        for (uint32_t t = 0; t < bu.sinks; ++t) forced[t / P] = true;
        for (uint32_t t = s.T - bu.window; t < s.T; ++t) forced[t / P] = true;
        if (s.T % P) forced[pages - 1] = true;
        uint32_t kept_forced = 0;
        std::vector<uint32_t> free_pages;
        for (uint32_t p = 0; p < pages; ++p) {
            if (forced[p])
                kept_forced += std::min(s.T, (p + 1) * P) - p * P;
            else
                free_pages.push_back(p);
        }
        const uint32_t want_pages =
            bu.keep > kept_forced ? std::min<uint32_t>((bu.keep - kept_forced + P - 1) / P, (uint32_t)free_pages.size())
                                  : 0;
        std::vector<double> mean(pages, 0.0);
        for (uint32_t p : free_pages) {
            for (uint32_t h = 0; h < s.H; ++h)
                for (uint32_t t = p * P; t < (p + 1) * P; ++t) mean[p] += sc[(size_t)h * s.T + t];
            mean[p] /= (double)P * s.H;
        }
        std::stable_sort(free_pages.begin(), free_pages.end(),
                         [&](uint32_t a, uint32_t x) { return mean[a] > mean[x]; });
        std::vector<bool> keep_page = forced;
        for (uint32_t i = 0; i < want_pages; ++i) keep_page[free_pages[i]] = true;
        std::vector<int64_t> want;
        for (uint32_t t = 0; t < s.T; ++t)
            if (keep_page[t / P]) want.push_back(t);

        nq_block_info info = info_of(b.get());
        EXPECT_EQ(info.tokens_kept, want.size());
        EXPECT_GE(info.tokens_kept, std::min(bu.keep, s.T));
        for (uint32_t h = 0; h < s.H; ++h) {
            std::vector<int64_t> got = positions_of(b.get(), h);
            EXPECT_EQ(got, want) << "T " << s.T << " page " << P;
            std::vector<int> per_page(pages, 0);
            for (int64_t p : got) ++per_page[p / P];
            for (uint32_t p = 0; p < pages; ++p)
                EXPECT_TRUE(per_page[p] == 0 || per_page[p] == (int)(std::min(s.T, (p + 1) * P) - p * P))
                    << "page " << p << " partly kept";
        }
    }
}

// Without scores the key-norm proxy ranks keys with the smallest norm highest.
TEST(Eviction, KeyNormProxy) {
    for (int rep = 0; rep < 15; ++rep) {
        EvictCase s = random_setup(1 + below(3), 40 + below(100), 32);
        Ctx ctx = make_ctx(config_of(s, NQ_EVICT_PER_HEAD));
        Input in = make_input(s, Layout::DimStrided);
        Block b = compress(ctx.get(), in.kv, nullptr);
        ASSERT_TRUE(b);
        const Budget bu = ref_budget(s);
        for (uint32_t h = 0; h < s.H; ++h) {
            std::vector<double> score(s.T, 0.0);
            for (uint32_t t = 0; t < s.T; ++t)
                for (uint32_t d = 0; d < s.D; ++d) score[t] -= in.K.at(h, t, d) * in.K.at(h, t, d);
            EXPECT_TRUE(agrees_up_to_ties(bu, s.T, score, positions_of(b.get(), h), s.positions, 1e-5)) << "head " << h;
        }
    }
}

// Attention of the last queries: causal softmax over keys at positions <= the query's,
// summed over queries, max-pooled over pool_kernel tokens, summed over the query
// heads of each KV head (GQA).
TEST(Eviction, QueryScoresOverGqaHeads) {
    for (int rep = 0; rep < 12; ++rep) {
        const uint32_t ratio = std::vector<uint32_t>{1, 3, 4}[rep % 3];
        EvictCase s = random_setup(1 + below(3), 40 + below(120), 32);
        nq_config c = config_of(s, NQ_EVICT_PER_HEAD);
        c.num_q_heads = s.H * ratio;
        Ctx ctx = make_ctx(c);
        Input in = make_input(s);
        const uint32_t W = 1 + below(12), Hq = s.H * ratio;
        const uint32_t pool = rep % 4 == 0 ? 1 : (rep % 4 == 1 ? 0 : 3 + 2 * below(4));
        Tensor q(rep % 2 ? NQ_DTYPE_F32 : NQ_DTYPE_BF16, Layout::HTD, Hq, W, s.D);
        Values Q = random_values(Hq, W, s.D, Dist::Gauss, 2.0);
        store(q, Q);
        std::vector<int64_t> qpos(W);
        const bool explicit_pos = below(2);
        for (uint32_t i = 0; i < W; ++i)
            qpos[i] = explicit_pos ? s.positions[below(s.T)] + below(3) : s.positions[s.T - W + i];
        if (explicit_pos) std::sort(qpos.begin(), qpos.end());
        nq_score_desc sd;
        nq_score_desc_init(&sd);
        sd.kind = NQ_SCORES_QUERIES;
        sd.queries = q.base();
        sd.query_dtype = q.dtype();
        sd.num_queries = W;
        sd.q_stride_head = q.layout().stride_head;
        sd.q_stride_token = q.layout().stride_token;
        sd.q_stride_dim = q.layout().stride_dim;
        sd.query_positions = explicit_pos ? qpos.data() : nullptr;
        sd.pool_kernel = pool;
        Block b = compress(ctx.get(), in.kv, &sd);
        ASSERT_TRUE(b);

        const uint32_t half = (pool ? pool : 15) / 2;  // 15: the documented default
        std::vector<std::vector<double>> score(s.H, std::vector<double>(s.T, 0.0));
        for (uint32_t qh = 0; qh < Hq; ++qh) {
            const uint32_t h = qh / ratio;
            std::vector<double> acc(s.T, 0.0);
            for (uint32_t i = 0; i < W; ++i) {
                std::vector<double> logit;
                for (uint32_t t = 0; t < s.T && s.positions[t] <= qpos[i]; ++t) {
                    double dot = 0;
                    for (uint32_t d = 0; d < s.D; ++d) dot += Q.at(qh, i, d) * in.K.at(h, t, d);
                    logit.push_back(dot / std::sqrt((double)s.D));
                }
                if (logit.empty()) continue;
                const double mx = *std::max_element(logit.begin(), logit.end());
                double z = 0;
                for (double &l : logit) z += (l = std::exp(l - mx));
                for (size_t t = 0; t < logit.size(); ++t) acc[t] += logit[t] / z;
            }
            for (uint32_t t = 0; t < s.T; ++t) {
                double mx = 0;
                for (uint32_t u = t > half ? t - half : 0; u <= std::min(s.T - 1, t + half); ++u)
                    mx = std::max(mx, acc[u]);
                score[h][t] += mx;
            }
        }
        const Budget bu = ref_budget(s);
        for (uint32_t h = 0; h < s.H; ++h)
            EXPECT_TRUE(agrees_up_to_ties(bu, s.T, score[h], positions_of(b.get(), h), s.positions, 1e-4))
                << "head " << h << " ratio " << ratio << " pool " << pool;
    }
}

// Nothing is evicted with a zero fraction; a fraction that leaves less than the sinks
// and window keeps exactly those.
TEST(Eviction, BudgetEdges) {
    EvictCase s = random_setup(2, 64, 8);
    for (size_t i = 0; i < s.positions.size(); ++i) s.positions[i] = (int64_t)i;
    s.evict = 0.0f;
    {
        Ctx ctx = make_ctx(config_of(s, NQ_EVICT_PER_HEAD));
        Input in = make_input(s);
        Block b = compress(ctx.get(), in.kv);
        EXPECT_EQ(info_of(b.get()).tokens_kept, s.T);
        EXPECT_EQ(info_of(b.get()).positions_per_head, 0u);
        EXPECT_EQ(info_of(b.get()).position_bytes, 0u);
    }
    s.evict = 0.99f;
    s.sinks = 4;
    s.window = 10;
    s.fp16_sinks = 2;
    s.fp16_window = 5;
    {
        Ctx ctx = make_ctx(config_of(s, NQ_EVICT_PER_HEAD));
        Input in = make_input(s);
        Block b = compress(ctx.get(), in.kv);
        EXPECT_EQ(info_of(b.get()).tokens_kept, 14u);
        std::vector<int64_t> want = {0, 1, 2, 3};
        for (int64_t t = 54; t < 64; ++t) want.push_back(t);
        EXPECT_EQ(positions_of(b.get(), 1), want);
    }
    s.sinks = 0;
    s.window = 0;
    s.fp16_sinks = s.fp16_window = 0;
    {
        Ctx ctx = make_ctx(config_of(s, NQ_EVICT_HEAD_SHARED));
        Input in = make_input(s);
        Block b = compress(ctx.get(), in.kv);
        EXPECT_EQ(info_of(b.get()).tokens_kept, 1u);  // at least one token stays
    }
}
