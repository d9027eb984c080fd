package nexusquant

// #include <nexusquant.h>
import "C"

import (
	"fmt"
	"math"
	"unsafe"
)

// DType is the element type of K, V or queries.
type DType int

const (
	F16  DType = C.NQ_DTYPE_F16
	BF16 DType = C.NQ_DTYPE_BF16
	F32  DType = C.NQ_DTYPE_F32
)

// Elements is a slice of K or V elements: f16 or bf16 bit patterns, or float32.
type Elements struct {
	dtype DType
	u16   []uint16
	f32   []float32
}

// F16Bits wraps f16 bit patterns.
func F16Bits(s []uint16) Elements { return Elements{dtype: F16, u16: s} }

// BF16Bits wraps bf16 bit patterns.
func BF16Bits(s []uint16) Elements { return Elements{dtype: BF16, u16: s} }

// Float32 wraps float32 values.
func Float32(s []float32) Elements { return Elements{dtype: F32, f32: s} }

func (e Elements) DType() DType { return e.dtype }

func (e Elements) Len() int {
	if e.dtype == F32 {
		return len(e.f32)
	}
	return len(e.u16)
}

// ptr is the address of element `offset` (nil for an empty slice); the slice stays
// reachable through the caller's arguments for the duration of the call.
func (e Elements) ptr(offset int) unsafe.Pointer {
	if e.Len() == 0 {
		return nil
	}
	if e.dtype == F32 {
		return unsafe.Pointer(&e.f32[offset])
	}
	return unsafe.Pointer(&e.u16[offset])
}

// LayoutKind says how Layout addresses elements.
type LayoutKind int

const (
	// HeadsTokensDim is [heads][tokens][head_dim], contiguous (the zero Layout).
	HeadsTokensDim LayoutKind = iota
	// TokensHeadsDim is [tokens][heads][head_dim], contiguous.
	TokensHeadsDim
	// Strided: element (h, t, d) at Offset + h*Head + t*Token + d*Dim.
	Strided
	// Paged: token t in page PageTable[t/PageSize], at page*Page + (t%PageSize)*Token
	// + h*Head + d*Dim. The number of pages the slice holds is computed from its length
	// and given to the library, which refuses table entries past it.
	Paged
)

// Layout of K or V in a slice. Strides are in elements and non-negative.
type Layout struct {
	Kind             LayoutKind
	Offset           int
	Head, Token, Dim int
	PageSize         int
	PageTable        []int32
	Page             int
}

// StridedLayout is a Strided layout.
func StridedLayout(offset, head, token, dim int) Layout {
	return Layout{Kind: Strided, Offset: offset, Head: head, Token: token, Dim: dim}
}

// PagedLayout is a Paged layout.
func PagedLayout(pageSize int, table []int32, page, token, head, dim int) Layout {
	return Layout{Kind: Paged, PageSize: pageSize, PageTable: table, Page: page, Token: token, Head: head, Dim: dim}
}

// mulAdd returns acc + a*b, false on overflow (all non-negative).
func mulAdd(acc, a, b int) (int, bool) {
	if a < 0 || b < 0 || acc < 0 {
		return 0, false
	}
	if a != 0 && b > (math.MaxInt-acc)/a {
		return 0, false
	}
	return acc + a*b, true
}

// rawLayout converts a layout of heads x tokens x headDim elements in a slice of n
// elements, checking that every element it can address lies inside the slice. It
// returns the offset of element (0, 0, 0).
func rawLayout(l *Layout, heads, tokens, headDim, n int, what string) (C.nq_layout, int, error) {
	var raw C.nq_layout
	raw.kind = C.NQ_LAYOUT_STRIDED
	extent := func(axes ...[2]int) (int, error) { // one past the largest offset; 0 if empty
		last := 0
		for _, a := range axes {
			if a[1] == 0 {
				return 0, nil
			}
		}
		for _, a := range axes {
			var ok bool
			if last, ok = mulAdd(last, a[0], a[1]-1); !ok {
				return 0, invalid(what + ": the layout's extent overflows or a stride is negative")
			}
		}
		return last + 1, nil
	}
	dim := 1
	if l.Kind == Strided || l.Kind == Paged {
		dim = l.Dim
	}
	if dim == 0 { // the library reads 0 as 1
		return raw, 0, invalid(what + ": the dim stride is 0")
	}
	switch l.Kind {
	case Paged:
		if l.PageSize <= 0 || l.PageSize > math.MaxUint32 {
			return raw, 0, invalid(fmt.Sprintf("%s: page size %d", what, l.PageSize))
		}
		used := (tokens + l.PageSize - 1) / l.PageSize
		if len(l.PageTable) < used {
			return raw, 0, invalid(fmt.Sprintf("%s: %d tokens need %d page table entries, the table has %d",
				what, tokens, used, len(l.PageTable)))
		}
		span, err := extent([2]int{l.Head, heads}, [2]int{l.Token, l.PageSize}, [2]int{l.Dim, headDim})
		if err != nil {
			return raw, 0, err
		}
		if l.Page < 0 {
			return raw, 0, invalid(what + ": negative page stride")
		}
		pages := 0
		switch {
		case tokens == 0 || span == 0:
		case span > n:
			return raw, 0, invalid(fmt.Sprintf("%s: a page spans %d elements, the slice has %d", what, span, n))
		case l.Page == 0:
			pages = 1
		default:
			pages = (n-span)/l.Page + 1
		}
		if pages > math.MaxUint32 {
			pages = math.MaxUint32
		}
		raw.kind = C.NQ_LAYOUT_PAGED
		raw.page_size = C.uint32_t(l.PageSize)
		raw.stride_page = C.int64_t(l.Page)
		raw.stride_token = C.int64_t(l.Token)
		raw.stride_head = C.int64_t(l.Head)
		raw.stride_dim = C.int64_t(l.Dim)
		raw.num_pages = C.uint32_t(pages)
		return raw, 0, nil
	default:
		off, sh, st, sd := 0, tokens*headDim, headDim, 1
		switch l.Kind {
		case HeadsTokensDim:
		case TokensHeadsDim:
			sh, st = headDim, heads*headDim
		case Strided:
			off, sh, st, sd = l.Offset, l.Head, l.Token, l.Dim
		default:
			return raw, 0, invalid(fmt.Sprintf("%s: unknown layout kind %d", what, l.Kind))
		}
		need, err := extent([2]int{sh, heads}, [2]int{st, tokens}, [2]int{sd, headDim})
		if err != nil {
			return raw, 0, err
		}
		if need == 0 {
			off = 0
		} else if off < 0 || need > n-off || off > n {
			return raw, 0, invalid(fmt.Sprintf("%s: the layout addresses %d elements from offset %d, the slice has %d",
				what, need, off, n))
		}
		raw.stride_head = C.int64_t(sh)
		raw.stride_token = C.int64_t(st)
		raw.stride_dim = C.int64_t(sd)
		return raw, off, nil
	}
}

// Input is one chunk of keys and values to compress (one layer of one sequence).
// The zero layouts are [heads][tokens][head_dim].
type Input struct {
	K, V             Elements
	Tokens           int
	KLayout, VLayout Layout
	// Positions of every token (strictly increasing, < 2^32); nil = StartPosition + i.
	Positions     []int64
	StartPosition int64
	Layer         uint32
	RopeSeqLen    uint32 // dynamic NTK: the length the keys were rotated with
}

// Output is where a decode writes: K and V slices and their layouts. The number of
// tokens is the decoded range's.
type Output struct {
	K, V             Elements
	KLayout, VLayout Layout
}

// cDesc is a descriptor without its pointers plus the Go memory they point to.
type cDesc struct {
	kv       C.nq_kv_desc
	k, v     unsafe.Pointer
	kpt, vpt *C.int32_t
	pos      *C.int64_t
}

func tablePtr(l *Layout) *C.int32_t {
	if l.Kind != Paged || len(l.PageTable) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&l.PageTable[0]))
}

func describe(k, v Elements, kl, vl *Layout, heads, tokens, headDim int, who string) (cDesc, error) {
	var d cDesc
	if k.dtype != v.dtype || k.dtype == 0 {
		return d, invalid(who + ": K and V must have the same, set element type")
	}
	if tokens < 0 || tokens > math.MaxUint32 {
		return d, invalid(fmt.Sprintf("%s: %d tokens", who, tokens))
	}
	kr, koff, err := rawLayout(kl, heads, tokens, headDim, k.Len(), who+".k")
	if err != nil {
		return d, err
	}
	vr, voff, err := rawLayout(vl, heads, tokens, headDim, v.Len(), who+".v")
	if err != nil {
		return d, err
	}
	C.nq_kv_desc_init(&d.kv)
	d.kv.dtype = C.nq_dtype(k.dtype)
	d.kv.num_tokens = C.uint32_t(tokens)
	d.kv.k_layout = kr
	d.kv.v_layout = vr
	d.k, d.v = k.ptr(koff), v.ptr(voff)
	d.kpt, d.vpt = tablePtr(kl), tablePtr(vl)
	return d, nil
}

func (in *Input) desc(heads, headDim int) (cDesc, error) {
	d, err := describe(in.K, in.V, &in.KLayout, &in.VLayout, heads, in.Tokens, headDim, "kv")
	if err != nil {
		return d, err
	}
	if in.Positions != nil {
		if len(in.Positions) != in.Tokens {
			return d, invalid(fmt.Sprintf("kv.Positions has %d entries for %d tokens", len(in.Positions), in.Tokens))
		}
		if in.Tokens > 0 {
			d.pos = (*C.int64_t)(unsafe.Pointer(&in.Positions[0]))
		}
	}
	d.kv.start_position = C.int64_t(in.StartPosition)
	d.kv.layer = C.uint32_t(in.Layer)
	d.kv.rope_seq_len = C.uint32_t(in.RopeSeqLen)
	return d, nil
}

func (out *Output) desc(heads, headDim, tokens int) (cDesc, error) {
	return describe(out.K, out.V, &out.KLayout, &out.VLayout, heads, tokens, headDim, "out")
}

// ScoreKind says where importance scores come from (used only when a layer evicts).
type ScoreKind int

const (
	ScoresKeyNorm ScoreKind = C.NQ_SCORES_KEY_NORM
	ScoresGiven   ScoreKind = C.NQ_SCORES_GIVEN
	ScoresQueries ScoreKind = C.NQ_SCORES_QUERIES
)

// Scores of the tokens of one Input.
type Scores struct {
	Kind ScoreKind
	// ScoresGiven: the score of (KV head h, token t) at Given[h*StrideHead + t*StrideToken].
	Given                   []float32
	StrideHead, StrideToken int
	// ScoresQueries: the last NumQueries queries of every query head, contiguous
	// [q_heads][NumQueries][head_dim], RoPE applied; QueryPositions nil = those of the
	// last keys; PoolKernel 0 = 7.
	Queries        Elements
	NumQueries     int
	QueryPositions []int64
	PoolKernel     uint32
}

type cScores struct {
	sc      C.nq_score_desc
	scores  *C.float
	queries unsafe.Pointer
	qpos    *C.int64_t
}

func (s *Scores) desc(heads, qHeads, headDim, tokens int) (cScores, error) {
	var d cScores
	C.nq_score_desc_init(&d.sc)
	switch s.Kind {
	case ScoresKeyNorm:
	case ScoresGiven:
		need, ok := mulAdd(0, s.StrideHead, heads-1)
		if ok {
			need, ok = mulAdd(need, s.StrideToken, tokens-1)
		}
		if heads > 0 && tokens > 0 && (!ok || need >= len(s.Given)) {
			return d, invalid(fmt.Sprintf("scores: the strides address past the %d scores given", len(s.Given)))
		}
		d.sc.kind = C.NQ_SCORES_GIVEN
		d.sc.score_stride_head = C.int64_t(s.StrideHead)
		d.sc.score_stride_token = C.int64_t(s.StrideToken)
		if len(s.Given) > 0 {
			d.scores = (*C.float)(unsafe.Pointer(&s.Given[0]))
		}
	case ScoresQueries:
		if s.NumQueries < 0 || s.NumQueries > math.MaxUint32 {
			return d, invalid("scores: NumQueries out of range")
		}
		if need := qHeads * s.NumQueries * headDim; need > s.Queries.Len() {
			return d, invalid(fmt.Sprintf("scores.Queries: %d elements needed, %d given", need, s.Queries.Len()))
		}
		if s.QueryPositions != nil && len(s.QueryPositions) != s.NumQueries {
			return d, invalid("scores.QueryPositions: one per query")
		}
		d.sc.kind = C.NQ_SCORES_QUERIES
		d.sc.query_dtype = C.nq_dtype(s.Queries.dtype)
		d.sc.num_queries = C.uint32_t(s.NumQueries)
		d.sc.q_stride_head = C.int64_t(s.NumQueries * headDim)
		d.sc.q_stride_token = C.int64_t(headDim)
		d.sc.q_stride_dim = 1
		d.sc.pool_kernel = C.uint32_t(s.PoolKernel)
		d.queries = s.Queries.ptr(0)
		if len(s.QueryPositions) > 0 {
			d.qpos = (*C.int64_t)(unsafe.Pointer(&s.QueryPositions[0]))
		}
	default:
		return d, invalid(fmt.Sprintf("scores: unknown kind %d", s.Kind))
	}
	return d, nil
}
