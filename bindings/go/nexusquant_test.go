package nexusquant

import (
	"errors"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
)

const (
	tH = 2
	tD = 64
)

func data(n int, seed uint64) []float32 {
	s := seed*0x9e3779b97f4a7c15 | 1
	out := make([]float32, n)
	for i := range out {
		s ^= s << 13
		s ^= s >> 7
		s ^= s << 17
		out[i] = float32(s>>40)/float32(1<<24)*4 - 2
	}
	return out
}

func snrDB(a, b []float32) float64 {
	var s, n float64
	for i := range a {
		s += float64(a[i]) * float64(a[i])
		d := float64(a[i]) - float64(b[i])
		n += d * d
	}
	return 10 * math.Log10(s/n)
}

func f16Bits(x float32) uint16 {
	b := math.Float32bits(x)
	sign := uint16(b>>16) & 0x8000
	e := int((b>>23)&0xff) - 112
	if e <= 0 {
		return sign
	}
	return sign | uint16(e)<<10 | uint16((b&0x7fffff)>>13)
}

func newCtx(t *testing.T, preset Preset) *Context {
	t.Helper()
	cfg := NewConfig(tD, tH)
	cfg.Preset = preset
	cfg.Rope.Mode = RopeNone
	c, err := NewContext(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ok returns v, panicking (failing the test) on an error: ok(c.Compress(in)).
func ok[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestVersionAndABI(t *testing.T) {
	if VersionNumber() != HeaderVersionNumber || Version() != "0.1.0" {
		t.Fatalf("library %d (%s), header %d", VersionNumber(), Version(), HeaderVersionNumber)
	}
	if err := CheckABI(); err != nil {
		t.Fatal(err)
	}
	if KVCacheBytes(32, 8, 128, 4096, 2) != 2*32*8*128*4096*2 {
		t.Fatal("KVCacheBytes")
	}
}

func TestRoundTripFloat32(t *testing.T) {
	c := newCtx(t, PresetLossless)
	tokens := 300
	k, v := data(tH*tokens*tD, 1), data(tH*tokens*tD, 2)
	in := &Input{K: Float32(k), V: Float32(v), Tokens: tokens}
	bound := ok(c.CompressBound(in))
	b := ok(c.Compress(in))
	defer b.Close()
	info := ok(b.Info())
	if info.TokensKept != uint32(tokens) || info.NumHeads != tH || int(info.ResidentBytes) != bound {
		t.Fatalf("info %+v, bound %d", info, bound)
	}
	if info.HeaderBytes+info.PositionBytes+info.ScaleBytes+info.CodeBytes+info.FP16Bytes+info.KeyMeanBytes+info.PaddingBytes != info.ResidentBytes {
		t.Fatalf("byte breakdown %+v", info)
	}
	if d := ok(b.Data()); len(d) != bound {
		t.Fatalf("data %d bytes", len(d))
	}
	k2, v2, err := c.DecodeFloat32(b)
	if err != nil {
		t.Fatal(err)
	}
	if snrDB(k, k2) < 12 || snrDB(v, v2) < 8 {
		t.Fatalf("SNR K %.1f V %.1f", snrDB(k, k2), snrDB(v, v2))
	}
	pos := ok(b.Positions(1, 0, tokens))
	for i, p := range pos {
		if p != int64(i) {
			t.Fatalf("position %d is %d", i, p)
		}
	}
}

func TestLayoutsGiveTheSameBlock(t *testing.T) {
	c := newCtx(t, PresetHigh)
	tokens := 50
	src := data(tH*tokens*tD, 3)
	htd := make([]uint16, len(src))
	for i, x := range src {
		htd[i] = f16Bits(x)
	}
	thd := make([]uint16, len(htd))
	const pad = 3
	row := tD + pad
	padded := make([]uint16, 7+tH*tokens*row)
	const ps = 16
	table := []int32{1, 4, 2, 0}
	pool := make([]uint16, 5*ps*tH*tD)
	for h := 0; h < tH; h++ {
		for tok := 0; tok < tokens; tok++ {
			for d := 0; d < tD; d++ {
				x := htd[(h*tokens+tok)*tD+d]
				thd[(tok*tH+h)*tD+d] = x
				padded[7+(tok*tH+h)*row+d] = x
				pool[((int(table[tok/ps])*ps+tok%ps)*tH+h)*tD+d] = x
			}
		}
	}
	digest := func(in *Input) uint64 {
		b := ok(c.Compress(in))
		defer b.Close()
		return ok(b.Digest())
	}
	want := digest(&Input{K: F16Bits(htd), V: F16Bits(htd), Tokens: tokens})
	layouts := map[string]*Input{
		"tokens-heads-dim": {K: F16Bits(thd), V: F16Bits(thd), Tokens: tokens,
			KLayout: Layout{Kind: TokensHeadsDim}, VLayout: Layout{Kind: TokensHeadsDim}},
		"strided": {K: F16Bits(padded), V: F16Bits(padded), Tokens: tokens,
			KLayout: StridedLayout(7, row, tH*row, 1), VLayout: StridedLayout(7, row, tH*row, 1)},
		"paged": {K: F16Bits(pool), V: F16Bits(pool), Tokens: tokens,
			KLayout: PagedLayout(ps, table, ps*tH*tD, tH*tD, tD, 1), VLayout: PagedLayout(ps, table, ps*tH*tD, tH*tD, tD, 1)},
	}
	for name, in := range layouts {
		if got := digest(in); got != want {
			t.Errorf("%s: digest %x, want %x", name, got, want)
		}
	}
	bad := &Input{K: F16Bits(pool), V: F16Bits(pool), Tokens: tokens,
		KLayout: PagedLayout(ps, []int32{0, 1, 2, 5}, ps*tH*tD, tH*tD, tD, 1), VLayout: PagedLayout(ps, table, ps*tH*tD, tH*tD, tD, 1)}
	_, err := c.Compress(bad)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "page_table[3]") {
		t.Fatalf("page past the pool: %v", err)
	}
}

func TestSlicesAreChecked(t *testing.T) {
	c := newCtx(t, PresetLossless)
	tokens := 10
	v := make([]float32, tH*tokens*tD)
	for _, in := range []*Input{
		{K: Float32(v[1:]), V: Float32(v), Tokens: tokens},
		{K: Float32(v), V: F16Bits(make([]uint16, len(v))), Tokens: tokens},
		{K: Float32(v), V: Float32(v), Tokens: tokens, Positions: []int64{1, 2}},
		{K: Float32(v), V: Float32(v), Tokens: tokens, KLayout: StridedLayout(0, math.MaxInt/2, 1, 1)},
		{K: Float32(v), V: Float32(v), Tokens: tokens, KLayout: StridedLayout(0, 640, 64, 0)},
		{K: Float32(v), V: Float32(v), Tokens: tokens, KLayout: StridedLayout(-1, 640, 64, 1)},
	} {
		if _, err := c.Compress(in); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v", in.KLayout, err)
		}
	}
	b := ok(c.Compress(&Input{K: Float32(v), V: Float32(v), Tokens: tokens}))
	defer b.Close()
	err := c.Decode(b, 0, tokens, &Output{K: Float32(make([]float32, len(v))), V: Float32(make([]float32, len(v)-1))})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "out.v") {
		t.Fatal(err)
	}
}

func TestLibraryErrors(t *testing.T) {
	_, err := NewContext(NewConfig(12, 2))
	var e *Error
	if !errors.As(err, &e) || e.Status != ErrUnsupported || !strings.Contains(e.Message, "head_dim") {
		t.Fatalf("%v", err)
	}
	if !strings.HasPrefix(err.Error(), "NQ_ERR_UNSUPPORTED: ") || !errors.Is(err, ErrUnsupported) {
		t.Fatalf("%v", err)
	}
	c := newCtx(t, PresetLossless)
	v := make([]float32, tH*4*tD)
	_, err = c.Compress(&Input{K: Float32(v), V: Float32(v), Tokens: 4, Positions: []int64{0, 5, 5, 6}})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "positions[2]") {
		t.Fatal(err)
	}
	b := ok(c.Compress(&Input{K: Float32(v), V: Float32(v), Tokens: 4}))
	defer b.Close()
	out := &Output{K: Float32(make([]float32, tH*7*tD)), V: Float32(make([]float32, tH*7*tD))}
	if err := c.Decode(b, 2, 9, out); !errors.Is(err, ErrOutOfRange) {
		t.Fatal(err)
	}
	if _, err := PresetFromName("nope"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	if p := ok(PresetFromName("conservative")); p != PresetHigh || p.String() != "high" {
		t.Fatal(p)
	}
}

func TestArchive(t *testing.T) {
	c := newCtx(t, PresetBalanced)
	tokens := 120
	k, v := data(tH*tokens*tD, 4), data(tH*tokens*tD, 5)
	b := ok(c.Compress(&Input{K: Float32(k), V: Float32(v), Tokens: tokens, StartPosition: 1000}))
	defer b.Close()
	arch := ok(c.Serialize(b))
	back := ok(c.Deserialize(arch))
	defer back.Close()
	if ok(back.Digest()) != ok(b.Digest()) {
		t.Fatal("digest differs after the archive round trip")
	}
	bad := append([]byte(nil), arch...)
	bad[len(bad)/2] ^= 0x10
	if _, err := c.Deserialize(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
	if _, err := c.Deserialize(arch[:len(arch)-3]); !errors.Is(err, ErrTruncated) {
		t.Fatal(err)
	}
	if _, err := c.Deserialize([]byte("definitely not an archive")); !errors.Is(err, ErrVersion) {
		t.Fatal(err)
	}
	if _, err := c.Deserialize(nil); err == nil {
		t.Fatal("empty input accepted")
	}
}

func TestScores(t *testing.T) {
	cfg := NewConfig(tD, tH)
	cfg.Preset = PresetCustom
	cfg.KBits, cfg.VBits, cfg.EvictFraction = 4, 3, 0.5
	cfg.SinkTokens, cfg.RecentWindow, cfg.FP16Sinks, cfg.FP16Window = 0, 0, 0, 0
	cfg.EvictMode = EvictHeadShared
	c := ok(NewContext(cfg))
	defer c.Close()
	tokens := 64
	k, v := data(tH*tokens*tD, 8), data(tH*tokens*tD, 9)
	given := make([]float32, tH*tokens)
	for i := range given {
		given[i] = float32((i + 1) % 2) // even tokens
	}
	in := &Input{K: Float32(k), V: Float32(v), Tokens: tokens}
	b := ok(c.CompressWithScores(in, &Scores{Kind: ScoresGiven, Given: given, StrideHead: tokens, StrideToken: 1}))
	defer b.Close()
	pos := ok(b.Positions(0, 0, tokens/2))
	for i, p := range pos {
		if p != int64(2*i) {
			t.Fatalf("kept %v", pos)
		}
	}
	if _, err := c.CompressWithScores(in, &Scores{Kind: ScoresGiven, Given: given[1:], StrideHead: tokens, StrideToken: 1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	q := data(tH*4*tD, 10)
	b2 := ok(c.CompressWithScores(in, &Scores{Kind: ScoresQueries, Queries: Float32(q), NumQueries: 4, PoolKernel: 1}))
	b2.Close()
}

func TestSequence(t *testing.T) {
	c := newCtx(t, PresetLossless)
	s := ok(c.NewSequence(3))
	chunks := []int{40, 1, 1, 7}
	start := int64(0)
	for i, n := range chunks {
		k, v := data(tH*n*tD, uint64(20+i)), data(tH*n*tD, uint64(30+i))
		in := &Input{K: Float32(k), V: Float32(v), Tokens: n, StartPosition: start}
		if i == 2 {
			b := ok(c.Compress(in))
			if err := s.AppendBlock(b); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil { // borrowed now: Close does nothing
				t.Fatal(err)
			}
			if _, err := b.Digest(); err != nil {
				t.Fatal("appended block unusable:", err)
			}
		} else if err := s.Append(in); err != nil {
			t.Fatal(err)
		}
		start += int64(n)
	}
	if s.NumBlocks() != 4 {
		t.Fatal(s.NumBlocks())
	}
	tokens, resident, _, err := s.Totals()
	if err != nil || tokens != 49 || resident == 0 {
		t.Fatal(tokens, resident, err)
	}
	sk, _, err := s.DecodeFloat32()
	if err != nil {
		t.Fatal(err)
	}
	off := 0
	for i := 0; i < 4; i++ {
		b := ok(s.Block(i))
		bk, _ := must2(t)(c.DecodeFloat32(b))
		n := len(bk) / (tH * tD)
		for h := 0; h < tH; h++ {
			for j := 0; j < n*tD; j++ {
				if sk[(h*49+off)*tD+j] != bk[h*n*tD+j] {
					t.Fatalf("block %d head %d differs", i, h)
				}
			}
		}
		off += n
	}
	pos := ok(s.Positions(1, 0, 49))
	if pos[48] != 48 {
		t.Fatal(pos)
	}
	if _, err := s.Block(4); !errors.Is(err, ErrOutOfRange) {
		t.Fatal(err)
	}
	// Closing the context first defers freeing it until the sequence closes.
	borrowed := ok(s.Block(0))
	c.Close()
	if _, err := c.Compress(&Input{K: Float32(sk[:tH*tD]), V: Float32(sk[:tH*tD]), Tokens: 1}); err == nil {
		t.Fatal("closed context still compresses")
	}
	if _, _, _, err := s.Totals(); err != nil {
		t.Fatal("sequence unusable after its context was closed:", err)
	}
	s.Close()
	if _, err := borrowed.Digest(); err == nil {
		t.Fatal("a block borrowed from a closed sequence is still readable")
	}
}

func must2(t *testing.T) func(k, v []float32, err error) ([]float32, []float32) {
	return func(k, v []float32, err error) ([]float32, []float32) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return k, v
	}
}

func TestManyGoroutinesOneContext(t *testing.T) {
	cfg := NewConfig(tD, tH)
	cfg.Preset = PresetBalanced
	cfg.NumThreads = 2
	c := ok(NewContext(cfg))
	defer c.Close()
	tokens := 96
	type want struct {
		digest uint64
		k      []float32
	}
	inputs := make([]*Input, 6)
	wants := make([]want, 6)
	for i := range inputs {
		inputs[i] = &Input{K: Float32(data(tH*tokens*tD, uint64(50+i))), V: Float32(data(tH*tokens*tD, uint64(60+i))), Tokens: tokens}
		b := ok(c.Compress(inputs[i]))
		k, _ := must2(t)(c.DecodeFloat32(b))
		wants[i] = want{ok(b.Digest()), k}
		b.Close()
	}
	shared := ok(c.Compress(inputs[0]))
	defer shared.Close()
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for it := 0; it < 4; it++ {
				i := (g + it) % len(inputs)
				b, err := c.Compress(inputs[i])
				if err != nil {
					errs <- err.Error()
					return
				}
				d, _ := b.Digest()
				arch, _ := c.Serialize(b)
				back, err := c.Deserialize(arch)
				if err != nil {
					errs <- err.Error()
					return
				}
				d2, _ := back.Digest()
				k, _, _ := c.DecodeFloat32(shared)
				if d != wants[i].digest || d2 != d || len(k) != len(wants[0].k) || k[7] != wants[0].k[7] {
					errs <- "result differs from the single-goroutine one"
				}
				if _, err := c.Deserialize([]byte{byte(g), 1, 2}); !errors.Is(err, ErrTruncated) {
					errs <- "wrong error: " + err.Error()
				}
				b.Close()
				back.Close()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestFinalizersAndUseAfterClose(t *testing.T) {
	c := newCtx(t, PresetLossless)
	v := data(tH*8*tD, 70)
	for i := 0; i < 200; i++ { // dropped without Close: finalizers free them
		if _, err := c.Compress(&Input{K: Float32(v), V: Float32(v), Tokens: 8}); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			runtime.GC()
		}
	}
	runtime.GC()
	b := ok(c.Compress(&Input{K: Float32(v), V: Float32(v), Tokens: 8}))
	b.Close()
	b.Close()
	if _, err := b.Info(); err == nil {
		t.Fatal("closed block still readable")
	}
	if _, err := c.Serialize(b); err == nil {
		t.Fatal("closed block serialised")
	}
}

func TestConfigAndLayers(t *testing.T) {
	cfg := NewConfig(tD, tH)
	cfg.NumQHeads = 4 * tH
	cfg.Preset = PresetBalanced
	cfg.Overrides = []LayerOverride{{LayerBegin: 0, LayerEnd: 2, KBits: 6, EvictFraction: 0}}
	c := ok(NewContext(cfg))
	defer c.Close()
	l0, l5 := ok(c.LayerParams(0)), ok(c.LayerParams(5))
	if l0.KBits != 6 || l0.EvictFraction != 0 || l5.EvictFraction <= 0 || l0.VBits != l5.VBits {
		t.Fatalf("%+v %+v", l0, l5)
	}
	r := ok(c.Config())
	if r.NumQHeads != 4*tH || r.KBits == 0 {
		t.Fatalf("%+v", r)
	}
	if isa := c.CPUISA(); isa != "scalar" && isa != "avx2" && isa != "avx512" {
		t.Fatal(isa)
	}
	if n := ok(c.EstimateBytes(32, 4096)); n == 0 {
		t.Fatal(n)
	}
}
