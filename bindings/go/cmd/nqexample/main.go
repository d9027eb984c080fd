// Command nqexample compresses synthetic K/V (f16, [tokens][heads][dim] like an engine's
// cache), prints the block's size breakdown, writes and reads the archive form, decodes
// it back and reports the signal-to-noise ratio; then grows a sequence by a few steps.
//
//	go run ./cmd/nqexample [-preset balanced] [-tokens 1024]
package main

import (
	"flag"
	"fmt"
	"log"
	"math"

	"nexusquant"
)

func f16Bits(x float32) uint16 { // normal range, round to nearest even
	b := math.Float32bits(x)
	sign := uint32(b>>16) & 0x8000
	e := int((b>>23)&0xff) - 112
	if e <= 0 {
		return uint16(sign)
	}
	m := b & 0x7fffff
	h := sign | uint32(e)<<10 | m>>13
	if rest := m & 0x1fff; rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
		h++
	}
	return uint16(h)
}

func f16Value(h uint16) float32 {
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	v := math.Ldexp(1+m/1024, e-15)
	if e == 0 {
		v = math.Ldexp(m, -24)
	}
	if h&0x8000 != 0 {
		v = -v
	}
	return float32(v)
}

func snrDB(ref, got []float32) float64 {
	var s, n float64
	for i := range ref {
		s += float64(ref[i]) * float64(ref[i])
		d := float64(ref[i]) - float64(got[i])
		n += d * d
	}
	return 10 * math.Log10(s/math.Max(n, 1e-30))
}

func main() {
	presetName := flag.String("preset", "balanced", "lossless, high, balanced, max, S, M, L, XL")
	tokens := flag.Int("tokens", 1024, "tokens of the prefill")
	flag.Parse()
	if err := nexusquant.CheckABI(); err != nil {
		log.Fatal(err)
	}
	preset, err := nexusquant.PresetFromName(*presetName)
	if err != nil {
		log.Fatal(err)
	}
	const heads, dim = 4, 128
	fmt.Printf("nexusquant %s (preset %s)\n", nexusquant.Version(), preset)

	n := heads * *tokens * dim
	k, v := make([]uint16, n), make([]uint16, n)
	s := uint64(0x2545f4914f6cdd1d)
	next := func() float32 {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		return float32(s>>40)/float32(1<<24)*2 - 1
	}
	for i := range k {
		scale := float32(1)
		if i%dim == 3 {
			scale = 8 // an outlier key channel
		}
		k[i], v[i] = f16Bits(next()*scale), f16Bits(next())
	}

	cfg := nexusquant.NewConfig(dim, heads)
	cfg.Preset = preset
	cfg.Rope.Theta = 500000
	ctx, err := nexusquant.NewContext(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer ctx.Close()

	layout := nexusquant.Layout{Kind: nexusquant.TokensHeadsDim}
	in := &nexusquant.Input{K: nexusquant.F16Bits(k), V: nexusquant.F16Bits(v), Tokens: *tokens,
		KLayout: layout, VLayout: layout}
	block, err := ctx.Compress(in)
	if err != nil {
		log.Fatal(err)
	}
	defer block.Close()
	info, _ := block.Info()
	fmt.Printf("block: %d of %d tokens kept, K %d bits, V %d bits, %d bytes (%.2fx of fp16): header %d, positions %d, scales %d, codes %d, fp16 %d, key mean %d, padding %d\n",
		info.TokensKept, info.TokensIn, info.KBits, info.VBits, info.ResidentBytes, info.Ratio, info.HeaderBytes,
		info.PositionBytes, info.ScaleBytes, info.CodeBytes, info.FP16Bytes, info.KeyMeanBytes, info.PaddingBytes)

	archive, err := ctx.Serialize(block)
	if err != nil {
		log.Fatal(err)
	}
	back, err := ctx.Deserialize(archive)
	if err != nil {
		log.Fatal(err)
	}
	defer back.Close()
	d1, _ := block.Digest()
	d2, _ := back.Digest()
	fmt.Printf("archive: %d bytes, restores the same block: %v (digest %016x)\n", len(archive), d1 == d2, d1)

	k2, v2, err := ctx.DecodeFloat32(back)
	if err != nil {
		log.Fatal(err)
	}
	pos, _ := back.Positions(0, 0, int(info.TokensKept))
	var kr, vr []float32
	for _, p := range pos { // head 0 of every kept token
		base := int(p) * heads * dim
		for d := 0; d < dim; d++ {
			kr = append(kr, f16Value(k[base+d]))
			vr = append(vr, f16Value(v[base+d]))
		}
	}
	rows := int(info.TokensKept) * dim
	fmt.Printf("head 0: K SNR %.1f dB, V SNR %.1f dB\n", snrDB(kr, k2[:rows]), snrDB(vr, v2[:rows]))

	seq, err := ctx.NewSequence(0)
	if err != nil {
		log.Fatal(err)
	}
	defer seq.Close()
	if err := seq.Append(in); err != nil {
		log.Fatal(err)
	}
	for step := 0; step < 4; step++ {
		one := &nexusquant.Input{K: nexusquant.F16Bits(k[:heads*dim]), V: nexusquant.F16Bits(v[:heads*dim]), Tokens: 1,
			StartPosition: int64(*tokens + step)}
		if err := seq.Append(one); err != nil {
			log.Fatal(err)
		}
	}
	t, resident, original, _ := seq.Totals()
	fmt.Printf("sequence: %d blocks, %d tokens per head, %d bytes (%.2fx)\n", seq.NumBlocks(), t, resident,
		float64(original)/float64(resident))
}
