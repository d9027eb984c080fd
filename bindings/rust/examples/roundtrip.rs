//! Compresses synthetic K/V (f16, [tokens][heads][dim] like an engine's cache), prints
//! the block's size breakdown, writes and reads the archive form, decodes it back and
//! reports the signal-to-noise ratio; then grows a sequence by a few decode steps.
//!
//!     cargo run --example roundtrip [preset]      (preset: lossless, balanced, max, ...)
use nexusquant::{Config, Context, KvInput, Layout, Preset, Rope, Sequence};

fn f16_bits(x: f32) -> u16 {
    // Normal range only, round to nearest even; enough for the values below.
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let e = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if e <= 0 {
        return sign;
    }
    let m = b & 0x7f_ffff;
    let mut h = sign as u32 | (e as u32) << 10 | m >> 13;
    let rest = m & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    h as u16
}

fn f16_value(h: u16) -> f32 {
    let e = ((h >> 10) & 0x1f) as i32;
    let m = (h & 0x3ff) as f32;
    let v = if e == 0 { m * 2f32.powi(-24) } else { (1.0 + m / 1024.0) * 2f32.powi(e - 15) };
    if h & 0x8000 != 0 { -v } else { v }
}

fn snr_db(reference: &[f32], got: &[f32]) -> f64 {
    let (mut s, mut n) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(got) {
        s += (*a as f64).powi(2);
        n += (*a as f64 - *b as f64).powi(2);
    }
    10.0 * (s / n.max(1e-30)).log10()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let preset = match std::env::args().nth(1) {
        Some(name) => Preset::from_name(&name)?,
        None => Preset::Balanced,
    };
    let (heads, tokens, dim) = (4u32, 1024u32, 128u32);
    println!("nexusquant {} (preset {preset:?})", nexusquant::version());

    // [tokens][heads][dim] f16, a pseudo-random signal with one outlier key channel.
    let n = (heads * tokens * dim) as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let k: Vec<u16> = (0..n).map(|i| f16_bits(next() * if i % dim as usize == 3 { 8.0 } else { 1.0 })).collect();
    let v: Vec<u16> = (0..n).map(|_| f16_bits(next())).collect();

    let ctx = Context::new(&Config::new(dim, heads).preset(preset).rope(Rope { theta: 500000.0, ..Rope::default() }))?;
    let kv = KvInput::f16(&k, &v, tokens).layout(Layout::TokensHeadsDim);
    let block = ctx.compress(&kv)?;
    let info = block.info();
    println!(
        "block: {} of {} tokens kept, K {} bits, V {} bits, {} bytes ({:.2}x of fp16): header {}, positions {}, scales {}, codes {}, fp16 {}, key mean {}, padding {}",
        info.tokens_kept, info.tokens_in, info.k_bits, info.v_bits, info.resident_bytes, info.ratio, info.header_bytes,
        info.position_bytes, info.scale_bytes, info.code_bytes, info.fp16_bytes, info.key_mean_bytes, info.padding_bytes
    );

    let archive = ctx.serialize(&block)?;
    let back = ctx.deserialize(&archive)?;
    assert_eq!(back.digest()?, block.digest()?);
    println!("archive: {} bytes, restores the same block (digest {:016x})", archive.len(), block.digest()?);

    // Compare the kept tokens with the originals at the same positions (head 0).
    let (k2, v2) = ctx.decode_f32(&back)?;
    let kept = info.tokens_kept as usize;
    let pos = back.positions(0, 0..info.tokens_kept)?;
    let (mut kr, mut vr) = (Vec::new(), Vec::new());
    for &p in &pos {
        let base = (p as usize * heads as usize) * dim as usize; // head 0 of token p
        kr.extend(k[base..base + dim as usize].iter().map(|&h| f16_value(h)));
        vr.extend(v[base..base + dim as usize].iter().map(|&h| f16_value(h)));
    }
    let rows = kept * dim as usize;
    println!("head 0: K SNR {:.1} dB, V SNR {:.1} dB", snr_db(&kr, &k2[..rows]), snr_db(&vr, &v2[..rows]));

    // A sequence: the prefill, then four decode steps of one token each.
    let mut seq: Sequence<'_> = ctx.sequence(0)?;
    seq.append(&kv)?;
    for step in 0..4u32 {
        let (k1, v1) = (&k[..(heads * dim) as usize], &v[..(heads * dim) as usize]);
        seq.append(&KvInput::f16(k1, v1, 1).layout(Layout::TokensHeadsDim).start_position((tokens + step) as i64))?;
    }
    let t = seq.totals();
    println!(
        "sequence: {} blocks, {} tokens per head, {} bytes ({:.2}x)",
        seq.num_blocks(),
        t.tokens,
        t.resident_bytes,
        t.original_bytes as f64 / t.resident_bytes as f64
    );
    Ok(())
}
