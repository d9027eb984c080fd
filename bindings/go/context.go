package nexusquant

// #include "shim.h"
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Context is a validated configuration. It is read-only after creation, so it may be
// used from many goroutines at once. Close frees it once every Sequence made from it
// is closed too; a finalizer closes a Context nobody references.
type Context struct {
	mu                     sync.RWMutex // read-held during calls; Close takes it to free
	ptr                    *C.nq_context
	closed                 bool
	seqs                   int // open sequences, which point to the context
	headDim, heads, qHeads int
}

var errClosed = &Error{Status: ErrInvalidArgument, Message: "the handle is closed"}

// NewContext validates cfg and creates a context.
func NewContext(cfg Config) (*Context, error) {
	raw := cfg.raw()
	// The overrides go to C memory: a Go slice may not be reached through a struct that
	// is itself passed to C. The library copies them.
	var ov *C.nq_layer_override
	if n := len(cfg.Overrides); n > 0 {
		ov = (*C.nq_layer_override)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.nq_layer_override{}))))
		defer C.free(unsafe.Pointer(ov))
		dst := unsafe.Slice(ov, n)
		for i, o := range cfg.Overrides {
			dst[i] = C.nq_layer_override{layer_begin: C.uint32_t(o.LayerBegin), layer_end: C.uint32_t(o.LayerEnd),
				k_bits: C.uint32_t(o.KBits), v_bits: C.uint32_t(o.VBits), evict_fraction: C.float(o.EvictFraction)}
		}
	}
	var p *C.nq_context
	if err := call(func() C.nq_status {
		return C.nqgo_context_create(raw, ov, C.uint32_t(len(cfg.Overrides)), &p)
	}); err != nil {
		return nil, err
	}
	c := &Context{ptr: p}
	var resolved C.nq_config
	resolved.size = C.size_t(unsafe.Sizeof(resolved))
	C.nq_context_get_config(p, &resolved)
	c.headDim, c.heads, c.qHeads = int(resolved.head_dim), int(resolved.num_kv_heads), int(resolved.num_q_heads)
	runtime.SetFinalizer(c, (*Context).Close)
	return c, nil
}

// acquire read-locks the context for one call; release with c.mu.RUnlock().
func (c *Context) acquire() (*C.nq_context, error) {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return nil, errClosed
	}
	return c.ptr, nil
}

// Close frees the context (after its last sequence is closed). Calls after Close fail.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		c.freeIfUnused()
	}
	return nil
}

func (c *Context) freeIfUnused() { // c.mu held for writing
	if c.closed && c.seqs == 0 && c.ptr != nil {
		C.nq_context_free(c.ptr)
		c.ptr = nil
		runtime.SetFinalizer(c, nil)
	}
}

func (c *Context) HeadDim() int    { return c.headDim }
func (c *Context) NumKVHeads() int { return c.heads }
func (c *Context) NumQHeads() int  { return c.qHeads }

// Config is the resolved configuration (presets expanded for layer 0).
func (c *Context) Config() (Config, error) {
	p, err := c.acquire()
	if err != nil {
		return Config{}, err
	}
	defer c.mu.RUnlock()
	var raw C.nq_config
	raw.size = C.size_t(unsafe.Sizeof(raw))
	if err := call(func() C.nq_status { return C.nq_context_get_config(p, &raw) }); err != nil {
		return Config{}, err
	}
	return configFromRaw(&raw), nil
}

// LayerParams are the bits and eviction for one layer after presets and overrides.
func (c *Context) LayerParams(layer uint32) (LayerParams, error) {
	p, err := c.acquire()
	if err != nil {
		return LayerParams{}, err
	}
	defer c.mu.RUnlock()
	var raw C.nq_layer_params
	raw.size = C.size_t(unsafe.Sizeof(raw))
	if err := call(func() C.nq_status { return C.nq_context_layer_params(p, C.uint32_t(layer), &raw) }); err != nil {
		return LayerParams{}, err
	}
	return LayerParams{KBits: uint32(raw.k_bits), VBits: uint32(raw.v_bits), EvictFraction: float32(raw.evict_fraction),
		SinkTokens: uint32(raw.sink_tokens), RecentWindow: uint32(raw.recent_window),
		FP16Sinks: uint32(raw.fp16_sinks), FP16Window: uint32(raw.fp16_window)}, nil
}

// CPUISA is the instruction set the CPU backend runs: "scalar", "avx2" or "avx512".
func (c *Context) CPUISA() string {
	p, err := c.acquire()
	if err != nil {
		return "none"
	}
	defer c.mu.RUnlock()
	return C.GoString(C.nq_context_cpu_isa(p))
}

// compress runs one compress, bound or append call with in and scores (nil = key norms).
func (c *Context) compress(seq *C.nq_sequence, boundOnly bool, in *Input, s *Scores) (*C.nq_block, int, error) {
	d, err := in.desc(c.heads, c.headDim)
	if err != nil {
		return nil, 0, err
	}
	var sc cScores
	hasScores := C.int(0)
	if s != nil {
		if sc, err = s.desc(c.heads, c.qHeads, c.headDim, in.Tokens); err != nil {
			return nil, 0, err
		}
		hasScores = 1
	} else {
		C.nq_score_desc_init(&sc.sc)
	}
	p, err := c.acquire()
	if err != nil {
		return nil, 0, err
	}
	defer c.mu.RUnlock()
	var out *C.nq_block
	var bound C.size_t
	bo := C.int(0)
	if boundOnly {
		bo = 1
	}
	err = call(func() C.nq_status {
		return C.nqgo_compress(p, seq, bo, d.kv, d.k, d.v, d.kpt, d.vpt, d.pos, hasScores, sc.sc, sc.scores, sc.queries,
			sc.qpos, &bound, &out)
	})
	// The Go memory the library read is not referenced by it after the call; keep the
	// slices alive until here all the same.
	runtime.KeepAlive(in)
	runtime.KeepAlive(s)
	return out, int(bound), err
}

// CompressBound is the exact number of resident bytes Compress(in) will produce.
func (c *Context) CompressBound(in *Input) (int, error) {
	_, n, err := c.compress(nil, true, in, nil)
	return n, err
}

// Compress compresses one chunk (key-norm scores if the layer evicts).
func (c *Context) Compress(in *Input) (*Block, error) { return c.CompressWithScores(in, nil) }

// CompressWithScores compresses one chunk with the given scores (nil = key norms).
func (c *Context) CompressWithScores(in *Input, s *Scores) (*Block, error) {
	p, _, err := c.compress(nil, false, in, s)
	if err != nil {
		return nil, err
	}
	return newBlock(p), nil
}

// Decode writes kept tokens [begin, end) of b into out (token i of the range at token
// index i of out's layouts).
func (c *Context) Decode(b *Block, begin, end int, out *Output) error {
	if begin < 0 || end < begin || end > math32 {
		return &Error{Status: ErrOutOfRange, Message: fmt.Sprintf("token range [%d, %d)", begin, end)}
	}
	d, err := out.desc(c.heads, c.headDim, end-begin)
	if err != nil {
		return err
	}
	bp, err := b.acquire()
	if err != nil {
		return err
	}
	defer b.release()
	p, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()
	err = call(func() C.nq_status {
		return C.nqgo_decode(p, bp, nil, C.uint32_t(begin), C.uint32_t(end), d.kv, d.k, d.v, d.kpt, d.vpt)
	})
	runtime.KeepAlive(out)
	return err
}

const math32 = 1<<32 - 1

// DecodeFloat32 decodes every kept token as float32 [heads][tokens][head_dim] K and V.
func (c *Context) DecodeFloat32(b *Block) (k, v []float32, err error) {
	info, err := b.Info()
	if err != nil {
		return nil, nil, err
	}
	n := c.heads * int(info.TokensKept) * c.headDim
	k, v = make([]float32, n), make([]float32, n)
	err = c.Decode(b, 0, int(info.TokensKept), &Output{K: Float32(k), V: Float32(v)})
	return k, v, err
}

// Serialize returns the archive form of b (checksummed, positions delta-coded, zstd).
func (c *Context) Serialize(b *Block) ([]byte, error) {
	bp, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	p, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	var bound, written C.size_t
	if err := call(func() C.nq_status { return C.nq_block_serialize_bound(bp, &bound) }); err != nil {
		return nil, err
	}
	buf := make([]byte, int(bound))
	err = call(func() C.nq_status {
		return C.nq_block_serialize(p, bp, unsafe.Pointer(&buf[0]), bound, &written)
	})
	if err != nil {
		return nil, err
	}
	return buf[:int(written)], nil
}

// Deserialize reads an archive into a new block. Truncated, tampered or foreign bytes
// fail with ErrTruncated, ErrCorrupt or ErrVersion.
func (c *Context) Deserialize(data []byte) (*Block, error) {
	p, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	var src unsafe.Pointer
	if len(data) > 0 {
		src = unsafe.Pointer(&data[0])
	}
	var out *C.nq_block
	err = call(func() C.nq_status { return C.nq_block_deserialize(p, src, C.size_t(len(data)), &out) })
	runtime.KeepAlive(data)
	if err != nil {
		return nil, err
	}
	return newBlock(out), nil
}

// EstimateBytes is the resident size of `layers` blocks of `tokens` tokens.
func (c *Context) EstimateBytes(layers uint32, tokens uint64) (uint64, error) {
	p, err := c.acquire()
	if err != nil {
		return 0, err
	}
	defer c.mu.RUnlock()
	var n C.uint64_t
	err = call(func() C.nq_status { return C.nq_estimate_bytes(p, C.uint32_t(layers), C.uint64_t(tokens), &n) })
	return uint64(n), err
}
