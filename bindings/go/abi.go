package nexusquant

// #include "shim.h"
import "C"

import (
	"fmt"
	"unsafe"
)

type abiField struct {
	field  string
	offset uintptr
}

// The structs as this package was compiled (cgo reads the header), field by field.
func compiledLayouts() map[string]struct {
	size   uintptr
	fields []abiField
} {
	var cfg C.nq_config
	var kv C.nq_kv_desc
	var l C.nq_layout
	var sc C.nq_score_desc
	var bi C.nq_block_info
	var lp C.nq_layer_params
	var r C.nq_rope
	var ov C.nq_layer_override
	var buf C.nq_buffer
	var al C.nq_allocator
	type layout = struct {
		size   uintptr
		fields []abiField
	}
	return map[string]layout{
		"nq_config": {unsafe.Sizeof(cfg), []abiField{
			{"size", unsafe.Offsetof(cfg.size)}, {"head_dim", unsafe.Offsetof(cfg.head_dim)},
			{"num_kv_heads", unsafe.Offsetof(cfg.num_kv_heads)}, {"num_q_heads", unsafe.Offsetof(cfg.num_q_heads)},
			{"num_layers", unsafe.Offsetof(cfg.num_layers)}, {"preset", unsafe.Offsetof(cfg.preset)},
			{"codec", unsafe.Offsetof(cfg.codec)}, {"k_bits", unsafe.Offsetof(cfg.k_bits)},
			{"v_bits", unsafe.Offsetof(cfg.v_bits)}, {"evict_fraction", unsafe.Offsetof(cfg.evict_fraction)},
			{"target_ratio", unsafe.Offsetof(cfg.target_ratio)}, {"evict_mode", unsafe.Offsetof(cfg.evict_mode)},
			{"evict_page_size", unsafe.Offsetof(cfg.evict_page_size)}, {"sink_tokens", unsafe.Offsetof(cfg.sink_tokens)},
			{"recent_window", unsafe.Offsetof(cfg.recent_window)}, {"fp16_sinks", unsafe.Offsetof(cfg.fp16_sinks)},
			{"fp16_window", unsafe.Offsetof(cfg.fp16_window)}, {"rope", unsafe.Offsetof(cfg.rope)},
			{"rope.theta", unsafe.Offsetof(cfg.rope) + unsafe.Offsetof(cfg.rope.theta)},
			{"rope.attention_factor", unsafe.Offsetof(cfg.rope) + unsafe.Offsetof(cfg.rope.attention_factor)},
			{"backend", unsafe.Offsetof(cfg.backend)}, {"device", unsafe.Offsetof(cfg.device)},
			{"cpu_isa", unsafe.Offsetof(cfg.cpu_isa)}, {"num_threads", unsafe.Offsetof(cfg.num_threads)},
			{"allocator", unsafe.Offsetof(cfg.allocator)}, {"overrides", unsafe.Offsetof(cfg.overrides)},
			{"num_overrides", unsafe.Offsetof(cfg.num_overrides)},
			{"archive_zstd_level", unsafe.Offsetof(cfg.archive_zstd_level)},
			{"key_centering", unsafe.Offsetof(cfg.key_centering)},
		}},
		"nq_rope": {unsafe.Sizeof(r), []abiField{
			{"mode", unsafe.Offsetof(r.mode)}, {"pairing", unsafe.Offsetof(r.pairing)},
			{"rotary_dims", unsafe.Offsetof(r.rotary_dims)},
			{"original_max_position", unsafe.Offsetof(r.original_max_position)}, {"theta", unsafe.Offsetof(r.theta)},
			{"scaling", unsafe.Offsetof(r.scaling)}, {"factor", unsafe.Offsetof(r.factor)},
			{"low_freq_factor", unsafe.Offsetof(r.low_freq_factor)}, {"high_freq_factor", unsafe.Offsetof(r.high_freq_factor)},
			{"beta_fast", unsafe.Offsetof(r.beta_fast)}, {"beta_slow", unsafe.Offsetof(r.beta_slow)},
			{"attention_factor", unsafe.Offsetof(r.attention_factor)},
		}},
		"nq_layout": {unsafe.Sizeof(l), []abiField{
			{"kind", unsafe.Offsetof(l.kind)}, {"page_size", unsafe.Offsetof(l.page_size)},
			{"stride_head", unsafe.Offsetof(l.stride_head)}, {"stride_token", unsafe.Offsetof(l.stride_token)},
			{"stride_dim", unsafe.Offsetof(l.stride_dim)}, {"stride_page", unsafe.Offsetof(l.stride_page)},
			{"page_table", unsafe.Offsetof(l.page_table)}, {"num_pages", unsafe.Offsetof(l.num_pages)},
		}},
		"nq_kv_desc": {unsafe.Sizeof(kv), []abiField{
			{"size", unsafe.Offsetof(kv.size)}, {"dtype", unsafe.Offsetof(kv.dtype)}, {"memory", unsafe.Offsetof(kv.memory)},
			{"device", unsafe.Offsetof(kv.device)}, {"layer", unsafe.Offsetof(kv.layer)},
			{"num_tokens", unsafe.Offsetof(kv.num_tokens)}, {"rope_seq_len", unsafe.Offsetof(kv.rope_seq_len)},
			{"k", unsafe.Offsetof(kv.k)}, {"v", unsafe.Offsetof(kv.v)}, {"k_layout", unsafe.Offsetof(kv.k_layout)},
			{"v_layout", unsafe.Offsetof(kv.v_layout)},
			{"v_layout.page_table", unsafe.Offsetof(kv.v_layout) + unsafe.Offsetof(kv.v_layout.page_table)},
			{"positions", unsafe.Offsetof(kv.positions)}, {"start_position", unsafe.Offsetof(kv.start_position)},
		}},
		"nq_score_desc": {unsafe.Sizeof(sc), []abiField{
			{"size", unsafe.Offsetof(sc.size)}, {"kind", unsafe.Offsetof(sc.kind)}, {"memory", unsafe.Offsetof(sc.memory)},
			{"scores", unsafe.Offsetof(sc.scores)}, {"score_stride_head", unsafe.Offsetof(sc.score_stride_head)},
			{"score_stride_token", unsafe.Offsetof(sc.score_stride_token)}, {"queries", unsafe.Offsetof(sc.queries)},
			{"query_dtype", unsafe.Offsetof(sc.query_dtype)}, {"num_queries", unsafe.Offsetof(sc.num_queries)},
			{"q_stride_head", unsafe.Offsetof(sc.q_stride_head)}, {"q_stride_token", unsafe.Offsetof(sc.q_stride_token)},
			{"q_stride_dim", unsafe.Offsetof(sc.q_stride_dim)}, {"query_positions", unsafe.Offsetof(sc.query_positions)},
			{"pool_kernel", unsafe.Offsetof(sc.pool_kernel)},
		}},
		"nq_block_info": {unsafe.Sizeof(bi), []abiField{
			{"size", unsafe.Offsetof(bi.size)}, {"layer", unsafe.Offsetof(bi.layer)},
			{"tokens_kept", unsafe.Offsetof(bi.tokens_kept)}, {"codec", unsafe.Offsetof(bi.codec)},
			{"positions_per_head", unsafe.Offsetof(bi.positions_per_head)}, {"memory", unsafe.Offsetof(bi.memory)},
			{"first_position", unsafe.Offsetof(bi.first_position)}, {"last_position", unsafe.Offsetof(bi.last_position)},
			{"original_bytes", unsafe.Offsetof(bi.original_bytes)}, {"resident_bytes", unsafe.Offsetof(bi.resident_bytes)},
			{"ratio", unsafe.Offsetof(bi.ratio)}, {"header_bytes", unsafe.Offsetof(bi.header_bytes)},
			{"padding_bytes", unsafe.Offsetof(bi.padding_bytes)},
			{"key_mean_bytes", unsafe.Offsetof(bi.key_mean_bytes)},
		}},
		"nq_layer_params": {unsafe.Sizeof(lp), []abiField{
			{"size", unsafe.Offsetof(lp.size)}, {"k_bits", unsafe.Offsetof(lp.k_bits)},
			{"evict_fraction", unsafe.Offsetof(lp.evict_fraction)}, {"fp16_window", unsafe.Offsetof(lp.fp16_window)},
		}},
		"nq_layer_override": {unsafe.Sizeof(ov), []abiField{
			{"layer_begin", unsafe.Offsetof(ov.layer_begin)}, {"evict_fraction", unsafe.Offsetof(ov.evict_fraction)},
		}},
		"nq_buffer":    {unsafe.Sizeof(buf), []abiField{{"data", unsafe.Offsetof(buf.data)}, {"capacity", unsafe.Offsetof(buf.capacity)}}},
		"nq_allocator": {unsafe.Sizeof(al), []abiField{{"user", unsafe.Offsetof(al.user)}}},
	}
}

// CheckABI compares the struct layouts this package was compiled with (from the
// header cgo read) with those of the library loaded at run time (nq_abi_sizeof /
// nq_abi_offsetof), and the header's version with the library's. A mismatch means the
// package was built against another header than the library's: every call may then
// read or write the wrong bytes.
func CheckABI() error {
	if VersionNumber() != HeaderVersionNumber {
		return fmt.Errorf("nexusquant: header version %d, library version %d", HeaderVersionNumber, VersionNumber())
	}
	for name, l := range compiledLayouts() {
		cname := C.CString(name)
		size := uintptr(C.nq_abi_sizeof(cname))
		if size != l.size {
			C.free(unsafe.Pointer(cname))
			return fmt.Errorf("nexusquant: sizeof(%s) is %d here, %d in the library", name, l.size, size)
		}
		for _, f := range l.fields {
			cf := C.CString(f.field)
			off := uintptr(C.nq_abi_offsetof(cname, cf))
			C.free(unsafe.Pointer(cf))
			if off != f.offset {
				C.free(unsafe.Pointer(cname))
				return fmt.Errorf("nexusquant: offsetof(%s, %s) is %d here, %d in the library", name, f.field, f.offset, off)
			}
		}
		C.free(unsafe.Pointer(cname))
	}
	return nil
}
