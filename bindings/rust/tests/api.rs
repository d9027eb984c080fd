//! The safe layer against the freshly built library.
use nexusquant::{
    Config, Context, Elements, Error, EvictMode, KvInput, KvOutput, LayerOverride, Layout, Preset, Rope, RopeMode,
    Scores, Status,
};

const H: u32 = 2;
const D: u32 = 64;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

fn snr_db(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    let n: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    10.0 * (s / n).log10()
}

fn ctx(preset: Preset) -> Context {
    Context::new(&Config::new(D, H).preset(preset).rope(Rope { mode: RopeMode::None, ..Rope::default() })).unwrap()
}

fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let e = ((b >> 23) & 0xff) as i32 - 112;
    if e <= 0 {
        return sign;
    }
    sign | ((e as u32) << 10 | (b & 0x7f_ffff) >> 13) as u16
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Context>();
    check::<nexusquant::Block>();
    check::<nexusquant::BlockRef>();
    check::<nexusquant::Sequence<'static>>();
    check::<Error>();
}

#[test]
fn f32_round_trip_and_info() {
    let t = 300u32;
    let (k, v) = (data((H * t * D) as usize, 1), data((H * t * D) as usize, 2));
    let ctx = ctx(Preset::Lossless);
    let kv = KvInput::f32(&k, &v, t);
    let bound = ctx.compress_bound(&kv).unwrap();
    let b = ctx.compress(&kv).unwrap();
    let info = b.info();
    assert_eq!((info.num_heads, info.head_dim, info.tokens_in, info.tokens_kept), (H, D, t, t));
    assert_eq!(info.resident_bytes as usize, bound);
    assert_eq!(b.data().len(), bound);
    assert_eq!(
        info.header_bytes
            + info.position_bytes
            + info.scale_bytes
            + info.code_bytes
            + info.fp16_bytes
            + info.key_mean_bytes
            + info.padding_bytes,
        info.resident_bytes
    );
    assert!((info.ratio - info.original_bytes as f64 / info.resident_bytes as f64).abs() < 1e-9);
    let (k2, v2) = ctx.decode_f32(&b).unwrap();
    assert!(snr_db(&k, &k2) > 12.0, "K SNR {}", snr_db(&k, &k2));
    assert!(snr_db(&v, &v2) > 8.0, "V SNR {}", snr_db(&v, &v2));
    assert_eq!(b.positions(1, 0..t).unwrap(), (0..t as i64).collect::<Vec<_>>());
}

#[test]
fn f16_input_layouts_give_the_same_block() {
    let t = 50u32;
    let src = data((H * t * D) as usize, 3);
    let htd: Vec<u16> = src.iter().map(|&x| f16_bits(x)).collect();
    // [tokens][heads][dim] copy, and a padded strided copy with an offset
    let mut thd = vec![0u16; htd.len()];
    let pad = 3usize;
    let row = D as usize + pad;
    let mut padded = vec![0u16; 7 + (H * t) as usize * row];
    for h in 0..H as usize {
        for tok in 0..t as usize {
            for d in 0..D as usize {
                let x = htd[(h * t as usize + tok) * D as usize + d];
                thd[(tok * H as usize + h) * D as usize + d] = x;
                padded[7 + (tok * H as usize + h) * row + d] = x;
            }
        }
    }
    let ctx = ctx(Preset::High);
    let want = ctx.compress(&KvInput::f16(&htd, &htd, t)).unwrap().digest().unwrap();
    let got = ctx.compress(&KvInput::f16(&thd, &thd, t).layout(Layout::TokensHeadsDim)).unwrap();
    assert_eq!(got.digest().unwrap(), want);
    let strided = Layout::Strided { offset: 7, head: row, token: H as usize * row, dim: 1 };
    let got = ctx.compress(&KvInput::f16(&padded, &padded, t).layout(strided)).unwrap();
    assert_eq!(got.digest().unwrap(), want);

    // Paged (NHD pages of 16 tokens, in a scrambled order within a larger pool).
    let ps = 16usize;
    let pages = (t as usize).div_ceil(ps);
    let table: Vec<i32> = (0..pages as i32).map(|i| (i * 3 + 1) % 5).collect();
    let mut pool = vec![0u16; 5 * ps * (H * D) as usize];
    for tok in 0..t as usize {
        let p = table[tok / ps] as usize;
        for h in 0..H as usize {
            let dst = ((p * ps + tok % ps) * H as usize + h) * D as usize;
            let srcr = (h * t as usize + tok) * D as usize;
            pool[dst..dst + D as usize].copy_from_slice(&htd[srcr..srcr + D as usize]);
        }
    }
    let paged = Layout::Paged {
        page_size: ps as u32,
        page_table: &table,
        page: ps * (H * D) as usize,
        token: (H * D) as usize,
        head: D as usize,
        dim: 1,
    };
    let got = ctx.compress(&KvInput::f16(&pool, &pool, t).layout(paged)).unwrap();
    assert_eq!(got.digest().unwrap(), want);

    // A table entry past the pool the slice holds is refused by the library.
    let bad: Vec<i32> = vec![0, 1, 2, 5];
    let bad_paged = Layout::Paged {
        page_size: ps as u32,
        page_table: &bad,
        page: ps * (H * D) as usize,
        token: (H * D) as usize,
        head: D as usize,
        dim: 1,
    };
    let err = ctx.compress(&KvInput::f16(&pool, &pool, t).layout(bad_paged)).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().contains("page_table[3]"), "{err}");
}

#[test]
fn slices_are_checked_before_the_library_sees_them() {
    let ctx = ctx(Preset::Lossless);
    let t = 10u32;
    let k = vec![0f32; (H * t * D) as usize - 1];
    let v = vec![0f32; (H * t * D) as usize];
    let err = ctx.compress(&KvInput::f32(&k, &v, t)).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().contains("kv.k") && err.message().contains("slice"), "{err}");
    let err = ctx.compress(&KvInput::new(Elements::F32(&v), Elements::F16(&[0u16; 1280]), t)).unwrap_err();
    assert!(err.message().contains("different element types"), "{err}");
    let err = ctx.compress(&KvInput::f32(&v, &v, t).positions(&[1, 2, 3])).unwrap_err();
    assert!(err.message().contains("positions"), "{err}");
    let huge = Layout::Strided { offset: 0, head: usize::MAX / 2, token: 1, dim: 1 };
    assert_eq!(ctx.compress(&KvInput::f32(&v, &v, t).layout(huge)).unwrap_err().status(), Status::InvalidArgument);
    let zero_dim = Layout::Strided { offset: 0, head: 640, token: 64, dim: 0 };
    assert!(ctx.compress(&KvInput::f32(&v, &v, t).layout(zero_dim)).unwrap_err().message().contains("dim stride"));
    // decode output too short
    let b = ctx.compress(&KvInput::f32(&v, &v, t)).unwrap();
    let (mut ok, mut short) = (vec![0f32; v.len()], vec![0f32; v.len() - 1]);
    let err = ctx.decode(&b, 0..t, &mut KvOutput::f32(&mut ok, &mut short)).unwrap_err();
    assert!(err.message().contains("out.v"), "{err}");
}

#[test]
fn library_errors_carry_status_and_message() {
    let err = Context::new(&Config::new(12, 2)).unwrap_err();
    assert_eq!(err.status(), Status::Unsupported);
    assert!(err.message().contains("head_dim"), "{err}");
    assert!(err.to_string().starts_with("NQ_ERR_UNSUPPORTED: "), "{err}");
    let ctx = ctx(Preset::Lossless);
    let v = vec![0.5f32; (H * 4 * D) as usize];
    let err = ctx.compress(&KvInput::f32(&v, &v, 4).positions(&[0, 5, 5, 6])).unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument);
    assert!(err.message().contains("positions[2]"), "{err}");
    let b = ctx.compress(&KvInput::f32(&v, &v, 4)).unwrap();
    let mut out = (vec![0f32; (H * 7 * D) as usize], vec![0f32; (H * 7 * D) as usize]);
    let err = ctx.decode(&b, 2..9, &mut KvOutput::f32(&mut out.0, &mut out.1)).unwrap_err();
    assert_eq!(err.status(), Status::OutOfRange);
    assert_eq!(Status::from_raw(nexusquant::sys::NQ_ERR_CORRUPT), Some(Status::Corrupt));
    assert_eq!(Status::from_raw(99), Some(Status::Unknown(99)));
    assert_eq!(Status::Corrupt.name(), "NQ_ERR_CORRUPT");
}

#[test]
fn archive_round_trip_and_damage() {
    let t = 120u32;
    let (k, v) = (data((H * t * D) as usize, 4), data((H * t * D) as usize, 5));
    let ctx = ctx(Preset::Balanced);
    let b = ctx.compress(&KvInput::f32(&k, &v, t).start_position(1000)).unwrap();
    let bytes = ctx.serialize(&b).unwrap();
    let back = ctx.deserialize(&bytes).unwrap();
    assert_eq!(back.digest().unwrap(), b.digest().unwrap());
    assert_eq!(ctx.decode_f32(&back).unwrap(), ctx.decode_f32(&b).unwrap());
    assert_eq!(back.positions(1, 0..b.tokens_kept()).unwrap(), b.positions(1, 0..b.tokens_kept()).unwrap());

    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    assert_eq!(ctx.deserialize(&bad).unwrap_err().status(), Status::Corrupt);
    assert_eq!(ctx.deserialize(&bytes[..bytes.len() - 3]).unwrap_err().status(), Status::Truncated);
    assert_eq!(ctx.deserialize(b"not an archive, not at all").unwrap_err().status(), Status::Version);
    assert_eq!(ctx.deserialize(b.data()).unwrap_err().status(), Status::Version); // resident bytes
    // A context of another shape refuses it.
    let other = Context::new(&Config::new(32, H)).unwrap();
    assert_eq!(other.deserialize(&bytes).unwrap_err().status(), Status::InvalidArgument);
}

#[test]
fn range_decode_and_output_layouts() {
    let t = 80u32;
    let (k, v) = (data((H * t * D) as usize, 6), data((H * t * D) as usize, 7));
    let ctx = ctx(Preset::Lossless);
    let b = ctx.compress(&KvInput::f32(&k, &v, t)).unwrap();
    let (fk, fv) = ctx.decode_f32(&b).unwrap();
    let (lo, hi) = (17u32, 61u32);
    let n = (hi - lo) as usize;
    let (mut pk, mut pv) = (vec![0f32; H as usize * n * D as usize], vec![0f32; H as usize * n * D as usize]);
    ctx.decode(&b, lo..hi, &mut KvOutput::f32(&mut pk, &mut pv).layout(Layout::TokensHeadsDim)).unwrap();
    for h in 0..H as usize {
        for i in 0..n {
            let whole = (h * t as usize + lo as usize + i) * D as usize;
            let part = (i * H as usize + h) * D as usize;
            assert_eq!(&pk[part..part + D as usize], &fk[whole..whole + D as usize]);
            assert_eq!(&pv[part..part + D as usize], &fv[whole..whole + D as usize]);
        }
    }
    // f16 and bf16 outputs
    let (mut hk, mut hv) = (vec![0u16; fk.len()], vec![0u16; fk.len()]);
    ctx.decode(&b, 0..t, &mut KvOutput::f16(&mut hk, &mut hv)).unwrap();
    assert_eq!(hk[5], f16_bits(fk[5]));
    ctx.decode(&b, 0..t, &mut KvOutput::bf16(&mut hk, &mut hv)).unwrap();
    assert!(((f32::from_bits((hk[9] as u32) << 16)) - fk[9]).abs() <= fk[9].abs() / 64.0);
}

#[test]
fn scores_choose_what_eviction_keeps() {
    let t = 64u32;
    let (k, v) = (data((H * t * D) as usize, 8), data((H * t * D) as usize, 9));
    let ctx = Context::new(
        &Config::new(D, H)
            .preset(Preset::Custom)
            .k_bits(4)
            .v_bits(3)
            .evict_fraction(0.5)
            .sink_tokens(0)
            .recent_window(0)
            .fp16_sinks(0)
            .fp16_window(0)
            .evict_mode(EvictMode::HeadShared),
    )
    .unwrap();
    // Keep the even tokens.
    let scores: Vec<f32> = (0..H * t).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
    let b = ctx
        .compress_with_scores(&KvInput::f32(&k, &v, t), &Scores::Given { scores: &scores, stride_head: t as usize, stride_token: 1 })
        .unwrap();
    assert_eq!(b.tokens_kept(), t / 2);
    assert_eq!(b.positions(0, 0..t / 2).unwrap(), (0..t as i64).step_by(2).collect::<Vec<_>>());
    let err = ctx
        .compress_with_scores(&KvInput::f32(&k, &v, t), &Scores::Given { scores: &scores[1..], stride_head: t as usize, stride_token: 1 })
        .unwrap_err();
    assert!(err.message().contains("scores"), "{err}");
    // Queries: the last 4 queries of every head.
    let q = data((H * 4 * D) as usize, 10);
    let b = ctx
        .compress_with_scores(
            &KvInput::f32(&k, &v, t),
            &Scores::Queries { queries: Elements::F32(&q), num_queries: 4, positions: None, pool_kernel: 1 },
        )
        .unwrap();
    assert_eq!(b.tokens_kept(), t / 2);
}

#[test]
fn config_layers_and_presets() {
    let ctx = Context::new(
        &Config::new(D, H)
            .num_q_heads(4 * H)
            .preset(Preset::Balanced)
            .layer_override(LayerOverride { layer_begin: 0, layer_end: 2, k_bits: Some(6), v_bits: None, evict_fraction: Some(0.0) }),
    )
    .unwrap();
    let l0 = ctx.layer_params(0).unwrap();
    let l5 = ctx.layer_params(5).unwrap();
    assert_eq!(l0.k_bits, 6);
    assert_eq!(l0.evict_fraction, 0.0);
    assert_eq!(l0.v_bits, l5.v_bits);
    assert!(l5.evict_fraction > 0.0);
    assert_eq!(ctx.num_q_heads(), 4 * H);
    assert!(["scalar", "avx2", "avx512"].contains(&ctx.cpu_isa()));
    assert_eq!(Preset::from_name("conservative").unwrap(), Preset::High);
    assert_eq!(Preset::from_name("XL").unwrap(), Preset::Xl);
    assert_eq!(Preset::from_name("nope").unwrap_err().status(), Status::InvalidArgument);
    assert!(ctx.estimate_bytes(32, 4096).unwrap() > 0);
    assert_eq!(nexusquant::kv_cache_bytes(32, 8, 128, 4096, 2), 2 * 32 * 8 * 128 * 4096 * 2);
    assert_eq!(nexusquant::version(), "0.1.0");
}

#[test]
fn sequences_grow_and_decode_across_blocks() {
    let ctx = ctx(Preset::Lossless);
    let chunks = [40u32, 1, 1, 7];
    let mut seq = ctx.sequence(3).unwrap();
    let mut start = 0i64;
    let mut all = Vec::new();
    for (i, &n) in chunks.iter().enumerate() {
        let (k, v) = (data((H * n * D) as usize, 20 + i as u64), data((H * n * D) as usize, 30 + i as u64));
        if i == 2 {
            // An existing block appended as is.
            let b = ctx.compress(&KvInput::f32(&k, &v, n).start_position(start)).unwrap();
            seq.append_block(b).unwrap();
        } else {
            seq.append(&KvInput::f32(&k, &v, n).start_position(start)).unwrap();
        }
        all.push((k, v, n));
        start += n as i64;
    }
    assert_eq!(seq.num_blocks(), 4);
    let total: u32 = chunks.iter().sum();
    let totals = seq.totals();
    assert_eq!(totals.tokens, total as u64);
    assert_eq!(totals.resident_bytes, seq.blocks().map(|b| b.info().resident_bytes).sum::<u64>());
    assert_eq!(seq.positions(1, 0..total).unwrap(), (0..total as i64).collect::<Vec<_>>());
    // Whole-sequence decode equals each block's decode, block after block.
    let (sk, _) = seq.decode_f32().unwrap();
    let mut offset = 0usize;
    for b in seq.blocks() {
        let n = b.tokens_kept() as usize;
        let (bk, _) = ctx.decode_f32(b).unwrap();
        for h in 0..H as usize {
            let s = (h * total as usize + offset) * D as usize;
            assert_eq!(&sk[s..s + n * D as usize], &bk[h * n * D as usize..(h + 1) * n * D as usize]);
        }
        offset += n;
    }
    // Positions must continue: a block that goes back is refused (and dropped).
    let (k, v) = (data((H * D) as usize, 99), data((H * D) as usize, 98));
    let old = ctx.compress(&KvInput::f32(&k, &v, 1).start_position(3)).unwrap();
    assert_eq!(seq.append_block(old).unwrap_err().status(), Status::InvalidArgument);
    assert!(seq.block(4).is_none());
}

#[test]
fn one_context_many_threads() {
    let t = 96u32;
    let ctx = ctx(Preset::Balanced);
    let inputs: Vec<(Vec<f32>, Vec<f32>)> =
        (0..6).map(|i| (data((H * t * D) as usize, 50 + i), data((H * t * D) as usize, 60 + i))).collect();
    type Decoded = (Vec<f32>, Vec<f32>);
    let want: Vec<(u64, Decoded)> = inputs
        .iter()
        .map(|(k, v)| {
            let b = ctx.compress(&KvInput::f32(k, v, t)).unwrap();
            (b.digest().unwrap(), ctx.decode_f32(&b).unwrap())
        })
        .collect();
    let shared = ctx.compress(&KvInput::f32(&inputs[0].0, &inputs[0].1, t)).unwrap();
    std::thread::scope(|s| {
        for id in 0..8usize {
            let (ctx, inputs, want, shared) = (&ctx, &inputs, &want, &shared);
            s.spawn(move || {
                for it in 0..4 {
                    let i = (id + it) % inputs.len();
                    let b = ctx.compress(&KvInput::f32(&inputs[i].0, &inputs[i].1, t)).unwrap();
                    assert_eq!(b.digest().unwrap(), want[i].0);
                    assert_eq!(ctx.decode_f32(&b).unwrap(), want[i].1);
                    let back = ctx.deserialize(&ctx.serialize(&b).unwrap()).unwrap();
                    assert_eq!(back.digest().unwrap(), want[i].0);
                    assert_eq!(ctx.decode_f32(shared).unwrap(), want[0].1);
                    // this thread's own error message
                    let e = ctx.deserialize(&[id as u8; 3]).unwrap_err();
                    assert_eq!(e.status(), Status::Truncated, "{e}");
                }
            });
        }
    });
}
