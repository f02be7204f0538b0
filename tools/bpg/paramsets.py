"""HEVC parameter sets and NAL units, as far as BPG needs them (H.265 section 7.3).

- NAL units of an Annex-B stream, emulation prevention;
- :class:`HevcHeader`, the SPS fields a BPG file keeps, read and written by ONE routine
  (:func:`_sps_coding_fields`) in both forms: the compact ``hevc_header`` of the file and
  the full SPS (x265's, or the one a decoder rebuilds);
- the VPS/SPS a BPG decoder rebuilds from the file header;
- the PPS and the slice segment header of an intra picture, read far enough to normalise
  the one slice-header flag that x265 varies with the picture count (see
  :func:`normalise_slice_header`).

Field names follow H.265 so they can be checked side by side with the spec.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .bits import BitReader, BitWriter
from .errors import BpgError

# HEVC NAL unit types that matter here
NAL_IDR_W_RADL, NAL_IDR_N_LP = 19, 20
NAL_VPS, NAL_SPS, NAL_PPS, NAL_AUD = 32, 33, 34, 35


# ------------------------------------------------------------------------ NAL units

_NEEDS_EPB = re.compile(b"\x00\x00(?=[\x00-\x03])")


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes (00 00 0x -> 00 00 03 0x for x <= 3)."""
    return _NEEDS_EPB.sub(b"\x00\x00\x03", rbsp)


def unescape_nal(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def split_annexb(stream: bytes) -> list[bytes]:
    """NAL units (without start codes) of an Annex-B byte stream."""
    parts = stream.split(b"\x00\x00\x01")
    nals = [p[:-1] if p.endswith(b"\x00") else p for p in parts[1:]]  # 4-byte start codes
    return [n for n in nals if n]


def nal_type(nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F


# --------------------------------------------------------------- the SPS fields BPG keeps

@dataclass
class HevcHeader:
    """The SPS fields BPG keeps (everything else in the SPS is fixed by the format)."""
    log2_min_luma_coding_block_size_minus3: int = 0
    log2_diff_max_min_luma_coding_block_size: int = 3
    log2_min_transform_block_size_minus2: int = 0
    log2_diff_max_min_transform_block_size: int = 3
    max_transform_hierarchy_depth_intra: int = 3
    sample_adaptive_offset_enabled_flag: int = 1
    pcm_enabled_flag: int = 0
    pcm_sample_bit_depth_luma_minus1: int = 0
    pcm_sample_bit_depth_chroma_minus1: int = 0
    log2_min_pcm_luma_coding_block_size_minus3: int = 0
    log2_diff_max_min_pcm_luma_coding_block_size: int = 0
    pcm_loop_filter_disabled_flag: int = 0
    strong_intra_smoothing_enabled_flag: int = 1
    sps_extension_present_flag: int = 0
    sps_range_extension_flag: int = 0
    sps_extension_7bits: int = 0
    #: the 9 range-extension flags, first flag (transform_skip_rotation) in the top bit
    sps_range_extension_flags: int = 0

    @property
    def min_cb_size(self) -> int:
        return 1 << (self.log2_min_luma_coding_block_size_minus3 + 3)

    def encode(self) -> bytes:
        """hevc_header as stored in a BPG file: its bits padded to a byte (no length)."""
        w = BitWriter()
        _sps_coding_fields(_Writing(w), self, compact=True)
        return w.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> tuple["HevcHeader", int]:
        """Parse a stored hevc_header; returns it and the number of bytes its fields take."""
        r = BitReader(data, "BPG hevc_header")
        h = cls()
        _sps_coding_fields(_Reading(r), h, compact=True)
        h.validate()
        return h, r.byte_aligned_pos()

    def validate(self) -> None:
        """Reject values that would make the rebuilt SPS invalid (HEVC's own limits)."""
        min_cb = self.log2_min_luma_coding_block_size_minus3 + 3
        ctb = min_cb + self.log2_diff_max_min_luma_coding_block_size
        min_tb = self.log2_min_transform_block_size_minus2 + 2
        max_tb = min_tb + self.log2_diff_max_min_transform_block_size
        checks = [
            (ctb <= 6, "log2_diff_max_min_luma_coding_block_size", "coding tree block larger than 64"),
            (max_tb <= 5, "log2_diff_max_min_transform_block_size", "transform block larger than 32"),
            (min_tb < min_cb, "log2_min_transform_block_size_minus2", "min transform not below min CB size"),
            (max_tb <= ctb, "log2_diff_max_min_transform_block_size", "max transform above CTB size"),
            (self.max_transform_hierarchy_depth_intra <= ctb - min_tb,
             "max_transform_hierarchy_depth_intra", "deeper than CTB/min transform allow"),
            (self.sps_extension_7bits == 0, "sps_extension_7bits", "unknown SPS extensions"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise BpgError(f"unsupported BPG hevc_header: {name} ({why})")


class _Reading:
    """Field access that reads: ``io.u(n, obj, name)`` sets ``obj.name`` from the bits."""

    def __init__(self, r: BitReader):
        self.r = r

    def u(self, n: int, obj, name: str) -> int:
        value = self.r.u(n, name)
        setattr(obj, name, value)
        return value

    def ue(self, obj, name: str) -> int:
        value = self.r.ue(name)
        setattr(obj, name, value)
        return value


class _Writing:
    """Field access that writes: ``io.u(n, obj, name)`` writes ``obj.name``."""

    def __init__(self, w: BitWriter):
        self.w = w

    def u(self, n: int, obj, name: str) -> int:
        value = getattr(obj, name)
        self.w.u(n, value)
        return value

    def ue(self, obj, name: str) -> int:
        value = getattr(obj, name)
        self.w.ue(value)
        return value


@dataclass
class SpsRest:
    """The SPS fields between log2_min_luma_coding_block_size and the extensions that BPG
    does not store; the values are what a BPG decoder rebuilds (bpg.md)."""
    max_transform_hierarchy_depth_inter: int = 0
    scaling_list_enabled_flag: int = 0
    amp_enabled_flag: int = 1
    num_short_term_ref_pic_sets: int = 0
    long_term_ref_pics_present_flag: int = 0
    sps_temporal_mvp_enabled_flag: int = 1
    vui_parameters_present_flag: int = 0


def _sps_coding_fields(io, hh: HevcHeader, compact: bool, rest: SpsRest | None = None) -> None:
    """The one description of the SPS from log2_min_luma_coding_block_size_minus3 to the
    extension flags (H.265 7.3.2.2), reading or writing through ``io``.  ``compact`` is the
    BPG hevc_header, which keeps only the HevcHeader fields, in the same order."""
    rest = rest if rest is not None else SpsRest(max_transform_hierarchy_depth_inter=hh.max_transform_hierarchy_depth_intra)
    io.ue(hh, "log2_min_luma_coding_block_size_minus3")
    io.ue(hh, "log2_diff_max_min_luma_coding_block_size")
    io.ue(hh, "log2_min_transform_block_size_minus2")
    io.ue(hh, "log2_diff_max_min_transform_block_size")
    if not compact:
        io.ue(rest, "max_transform_hierarchy_depth_inter")
    io.ue(hh, "max_transform_hierarchy_depth_intra")
    if not compact:
        if io.u(1, rest, "scaling_list_enabled_flag"):
            raise BpgError("HEVC SPS: scaling lists cannot be expressed in a BPG header")
        io.u(1, rest, "amp_enabled_flag")
    io.u(1, hh, "sample_adaptive_offset_enabled_flag")
    if io.u(1, hh, "pcm_enabled_flag"):
        io.u(4, hh, "pcm_sample_bit_depth_luma_minus1")
        io.u(4, hh, "pcm_sample_bit_depth_chroma_minus1")
        io.ue(hh, "log2_min_pcm_luma_coding_block_size_minus3")
        io.ue(hh, "log2_diff_max_min_pcm_luma_coding_block_size")
        io.u(1, hh, "pcm_loop_filter_disabled_flag")
    if not compact:
        # reference picture sets do not matter for the single intra picture, but must be skipped
        for i in range(io.ue(rest, "num_short_term_ref_pic_sets")):
            _skip_st_ref_pic_set(io, i)
        if io.u(1, rest, "long_term_ref_pics_present_flag"):
            raise BpgError("HEVC SPS: long-term reference pictures are not supported")
        io.u(1, rest, "sps_temporal_mvp_enabled_flag")
    io.u(1, hh, "strong_intra_smoothing_enabled_flag")
    if not compact and io.u(1, rest, "vui_parameters_present_flag"):
        if not isinstance(io, _Reading):
            raise ValueError("writing VUI parameters is not supported")
        _skip_vui(io.r)
    if io.u(1, hh, "sps_extension_present_flag"):
        io.u(1, hh, "sps_range_extension_flag")
        if io.u(7, hh, "sps_extension_7bits") and not compact:
            # multilayer / 3D / SCC extensions carry data BPG cannot store
            raise BpgError("HEVC SPS: extensions other than range extension are not supported")
        if hh.sps_range_extension_flag:
            io.u(9, hh, "sps_range_extension_flags")


def _skip_st_ref_pic_set(io, index: int) -> None:
    if not isinstance(io, _Reading):
        raise ValueError("writing reference picture sets is not supported")
    r = io.r
    if index and r.u(1, "inter_ref_pic_set_prediction_flag"):
        raise BpgError("HEVC SPS: predicted reference picture sets are not supported")
    neg, pos = r.ue("num_negative_pics"), r.ue("num_positive_pics")
    for _ in range(neg + pos):
        r.ue("delta_poc_minus1")
        r.u(1, "used_by_curr_pic_flag")


def _skip_vui(r: BitReader) -> None:
    if r.u(1, "aspect_ratio_info_present_flag") and r.u(8, "aspect_ratio_idc") == 255:
        r.u(32, "sar_width/sar_height")
    if r.u(1, "overscan_info_present_flag"):
        r.u(1, "overscan_appropriate_flag")
    if r.u(1, "video_signal_type_present_flag"):
        r.u(3, "video_format")
        r.u(1, "video_full_range_flag")
        if r.u(1, "colour_description_present_flag"):
            r.u(24, "colour_primaries/transfer_characteristics/matrix_coeffs")
    if r.u(1, "chroma_loc_info_present_flag"):
        r.ue("chroma_sample_loc_type_top_field")
        r.ue("chroma_sample_loc_type_bottom_field")
    r.u(3, "neutral_chroma/field_seq/frame_field_info_present")
    if r.u(1, "default_display_window_flag"):
        for _ in range(4):
            r.ue("def_disp_win_offset")
    if r.u(1, "vui_timing_info_present_flag"):
        r.u(64, "vui_num_units_in_tick/vui_time_scale")
        if r.u(1, "vui_poc_proportional_to_timing_flag"):
            r.ue("vui_num_ticks_poc_diff_one_minus1")
        if r.u(1, "vui_hrd_parameters_present_flag"):
            raise BpgError("HEVC SPS: HRD parameters are not supported")
    if r.u(1, "bitstream_restriction_flag"):
        r.u(3, "bitstream restriction flags")
        for _ in range(5):
            r.ue("bitstream restriction value")


# ------------------------------------------------------------ VPS / SPS: rebuild and parse

def _profile_tier_level(w: BitWriter) -> None:
    """Main 4:4:4 16 Still Picture (RExt, profile 4), level 8.5 — what BPG declares."""
    w.u(2, 0)            # general_profile_space
    w.u(1, 0)            # general_tier_flag
    w.u(5, 4)            # general_profile_idc: format range extensions
    w.u(32, 1 << (31 - 4))  # general_profile_compatibility_flag[4]
    w.u(1, 1)            # progressive_source_flag
    w.u(1, 0)            # interlaced_source_flag
    w.u(1, 0)            # non_packed_constraint_flag
    w.u(1, 1)            # frame_only_constraint_flag
    # max_12bit, max_10bit, max_8bit, max_422chroma, max_420chroma, max_monochrome,
    # intra, one_picture_only, lower_bit_rate: 16-bit, 4:4:4, intra, one picture
    for flag in (0, 0, 0, 0, 0, 0, 1, 1, 1):
        w.u(1, flag)
    w.u(34, 0)           # general_reserved_zero_34bits
    w.u(1, 0)            # general_inbld_flag
    w.u(8, 255)          # general_level_idc: 8.5 * 30


def build_vps() -> bytes:
    w = BitWriter()
    w.u(16, (NAL_VPS << 9) | 1)  # NAL header, layer 0, temporal id 0
    w.u(4, 0)     # vps_video_parameter_set_id
    w.u(1, 1)     # vps_base_layer_internal_flag
    w.u(1, 1)     # vps_base_layer_available_flag
    w.u(6, 0)     # vps_max_layers_minus1
    w.u(3, 0)     # vps_max_sub_layers_minus1
    w.u(1, 1)     # vps_temporal_id_nesting_flag
    w.u(16, 0xFFFF)
    _profile_tier_level(w)
    w.u(1, 1)     # vps_sub_layer_ordering_info_present_flag
    w.ue(0)       # vps_max_dec_pic_buffering_minus1
    w.ue(0)       # vps_max_num_reorder_pics
    w.ue(0)       # vps_max_latency_increase_plus1
    w.u(6, 0)     # vps_max_layer_id
    w.ue(0)       # vps_num_layer_sets_minus1
    w.u(1, 0)     # vps_timing_info_present_flag
    w.u(1, 0)     # vps_extension_flag
    w.trailing_bits()
    return escape_rbsp(w.to_bytes())


def build_sps(hh: HevcHeader, chroma_format_idc: int, width: int, height: int, bit_depth_minus_8: int) -> bytes:
    """The SPS a BPG decoder rebuilds from the file header (fixed values per the BPG spec).

    The picture is coded padded to the minimum CB size; there is no conformance window here:
    the caller crops to the picture size itself, which also covers odd sizes in 4:2:0 that
    a window in chroma units could not express exactly.
    """
    cb = hh.min_cb_size
    w = BitWriter()
    w.u(16, (NAL_SPS << 9) | 1)
    w.u(4, 0)     # sps_video_parameter_set_id
    w.u(3, 0)     # sps_max_sub_layers_minus1
    w.u(1, 1)     # sps_temporal_id_nesting_flag
    _profile_tier_level(w)
    w.ue(0)       # sps_seq_parameter_set_id
    w.ue(chroma_format_idc)
    if chroma_format_idc == 3:
        w.u(1, 0)  # separate_colour_plane_flag
    w.ue(-(-width // cb) * cb)
    w.ue(-(-height // cb) * cb)
    w.u(1, 0)     # conformance_window_flag
    w.ue(bit_depth_minus_8)  # luma
    w.ue(bit_depth_minus_8)  # chroma
    w.ue(4)       # log2_max_pic_order_cnt_lsb_minus4
    w.u(1, 1)     # sps_sub_layer_ordering_info_present_flag
    w.ue(0)
    w.ue(0)
    w.ue(0)
    _sps_coding_fields(_Writing(w), hh, compact=False)
    w.trailing_bits()
    return escape_rbsp(w.to_bytes())


@dataclass
class SpsInfo:
    """What the encoder needs from the SPS x265 wrote."""
    chroma_format_idc: int
    pic_width: int
    pic_height: int
    bit_depth_luma_minus8: int
    bit_depth_chroma_minus8: int
    amp_enabled_flag: int
    scaling_list_enabled_flag: int
    hevc_header: HevcHeader


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an encoder's SPS NAL (with its 2-byte header) far enough to fill hevc_header."""
    r = BitReader(unescape_nal(nal), "HEVC SPS")
    r.u(16, "nal_unit_header")
    r.u(4, "sps_video_parameter_set_id")
    if r.u(3, "sps_max_sub_layers_minus1"):
        raise BpgError("HEVC SPS: sps_max_sub_layers_minus1 must be 0 for BPG")
    r.u(1, "sps_temporal_id_nesting_flag")
    r.u(96, "profile_tier_level")
    r.ue("sps_seq_parameter_set_id")
    chroma_format_idc = r.ue("chroma_format_idc")
    if chroma_format_idc == 3 and r.u(1, "separate_colour_plane_flag"):
        raise BpgError("HEVC SPS: separate_colour_plane_flag is not allowed in BPG")
    width, height = r.ue("pic_width_in_luma_samples"), r.ue("pic_height_in_luma_samples")
    if r.u(1, "conformance_window_flag"):
        for name in ("left", "right", "top", "bottom"):
            r.ue(f"conf_win_{name}_offset")
    bd_luma, bd_chroma = r.ue("bit_depth_luma_minus8"), r.ue("bit_depth_chroma_minus8")
    r.ue("log2_max_pic_order_cnt_lsb_minus4")
    r.u(1, "sps_sub_layer_ordering_info_present_flag")
    for name in ("max_dec_pic_buffering_minus1", "max_num_reorder_pics", "max_latency_increase_plus1"):
        r.ue(name)
    hh, rest = HevcHeader(), SpsRest()
    _sps_coding_fields(_Reading(r), hh, compact=False, rest=rest)
    return SpsInfo(chroma_format_idc, width, height, bd_luma, bd_chroma, rest.amp_enabled_flag,
                   rest.scaling_list_enabled_flag, hh)


# --------------------------------------------------------- PPS and the intra slice header

@dataclass
class PpsInfo:
    """The PPS fields that shape an intra slice segment header."""
    dependent_slice_segments_enabled_flag: int = 0
    output_flag_present_flag: int = 0
    num_extra_slice_header_bits: int = 0
    pps_slice_chroma_qp_offsets_present_flag: int = 0
    deblocking_filter_override_enabled_flag: int = 0
    pps_deblocking_filter_disabled_flag: int = 0
    pps_loop_filter_across_slices_enabled_flag: int = 0
    chroma_qp_offset_list_enabled_flag: int = 0
    init_qp_minus26: int = 0


def parse_pps(nal: bytes) -> PpsInfo:
    """Parse a PPS NAL (with its 2-byte header) as far as the slice header needs."""
    r = BitReader(unescape_nal(nal), "HEVC PPS")
    p = PpsInfo()
    r.u(16, "nal_unit_header")
    r.ue("pps_pic_parameter_set_id")
    r.ue("pps_seq_parameter_set_id")
    p.dependent_slice_segments_enabled_flag = r.u(1, "dependent_slice_segments_enabled_flag")
    p.output_flag_present_flag = r.u(1, "output_flag_present_flag")
    p.num_extra_slice_header_bits = r.u(3, "num_extra_slice_header_bits")
    r.u(1, "sign_data_hiding_enabled_flag")
    r.u(1, "cabac_init_present_flag")
    r.ue("num_ref_idx_l0_default_active_minus1")
    r.ue("num_ref_idx_l1_default_active_minus1")
    p.init_qp_minus26 = r.se("init_qp_minus26")
    r.u(1, "constrained_intra_pred_flag")
    transform_skip = r.u(1, "transform_skip_enabled_flag")
    if r.u(1, "cu_qp_delta_enabled_flag"):
        r.ue("diff_cu_qp_delta_depth")
    r.se("pps_cb_qp_offset")
    r.se("pps_cr_qp_offset")
    p.pps_slice_chroma_qp_offsets_present_flag = r.u(1, "pps_slice_chroma_qp_offsets_present_flag")
    r.u(1, "weighted_pred_flag")
    r.u(1, "weighted_bipred_flag")
    r.u(1, "transquant_bypass_enabled_flag")
    tiles = r.u(1, "tiles_enabled_flag")
    r.u(1, "entropy_coding_sync_enabled_flag")
    if tiles:
        cols, rows = r.ue("num_tile_columns_minus1"), r.ue("num_tile_rows_minus1")
        if not r.u(1, "uniform_spacing_flag"):
            for _ in range(cols + rows):
                r.ue("tile size")
        r.u(1, "loop_filter_across_tiles_enabled_flag")
    p.pps_loop_filter_across_slices_enabled_flag = r.u(1, "pps_loop_filter_across_slices_enabled_flag")
    if r.u(1, "deblocking_filter_control_present_flag"):
        p.deblocking_filter_override_enabled_flag = r.u(1, "deblocking_filter_override_enabled_flag")
        p.pps_deblocking_filter_disabled_flag = r.u(1, "pps_deblocking_filter_disabled_flag")
        if not p.pps_deblocking_filter_disabled_flag:
            r.se("pps_beta_offset_div2")
            r.se("pps_tc_offset_div2")
    if r.u(1, "pps_scaling_list_data_present_flag"):
        raise BpgError("HEVC PPS: scaling lists are not supported")
    r.u(1, "lists_modification_present_flag")
    r.ue("log2_parallel_merge_level_minus2")
    r.u(1, "slice_segment_header_extension_present_flag")
    if r.u(1, "pps_extension_present_flag"):
        range_ext = r.u(1, "pps_range_extension_flag")
        if r.u(7, "pps_multilayer/3d/scc/4bits"):
            raise BpgError("HEVC PPS: extensions other than range extension are not supported")
        if range_ext:
            if transform_skip:
                r.ue("log2_max_transform_skip_block_size_minus2")
            r.u(1, "cross_component_prediction_enabled_flag")
            p.chroma_qp_offset_list_enabled_flag = r.u(1, "chroma_qp_offset_list_enabled_flag")
    return p


@dataclass
class _SliceHead:
    """An intra slice segment header read up to its QP: the reader stands after slice_qp_delta."""
    reader: BitReader
    slice_qp_delta: int
    sao_luma: int
    sao_chroma: int


def _read_slice_head(nal: bytes, pps: PpsInfo, sao_enabled: int, chroma_format_idc: int) -> _SliceHead:
    if nal_type(nal) not in (NAL_IDR_W_RADL, NAL_IDR_N_LP):
        raise BpgError(f"HEVC slice: NAL type {nal_type(nal)} is not an IDR picture")
    r = BitReader(unescape_nal(nal[:64]), "HEVC slice header")
    r.u(16, "nal_unit_header")
    if not r.u(1, "first_slice_segment_in_pic_flag"):
        raise BpgError("HEVC slice: more than one slice segment per picture")
    r.u(1, "no_output_of_prior_pics_flag")
    r.ue("slice_pic_parameter_set_id")
    r.u(pps.num_extra_slice_header_bits, "slice_reserved_flag")
    if r.ue("slice_type") != 2:
        raise BpgError("HEVC slice: not an I slice")
    if pps.output_flag_present_flag:
        r.u(1, "pic_output_flag")
    sao_luma = sao_chroma = 0
    if sao_enabled:
        sao_luma = r.u(1, "slice_sao_luma_flag")
        if chroma_format_idc:
            sao_chroma = r.u(1, "slice_sao_chroma_flag")
    return _SliceHead(r, r.se("slice_qp_delta"), sao_luma, sao_chroma)


def slice_qp(nal: bytes, pps: PpsInfo, sao_enabled: int, chroma_format_idc: int) -> int:
    """SliceQpY of an IDR slice segment (26 + init_qp_minus26 + slice_qp_delta, H.265 7.4.7.1):
    the quantiser the encoder was given (bpgenc's -q) when it used a constant QP."""
    return 26 + pps.init_qp_minus26 + _read_slice_head(nal, pps, sao_enabled, chroma_format_idc).slice_qp_delta


def slice_lfas_flag_position(nal: bytes, pps: PpsInfo, sao_enabled: int, chroma_format_idc: int) -> int | None:
    """Bit position (in the unescaped NAL) of slice_loop_filter_across_slices_enabled_flag in
    the header of an IDR slice segment, or None when the header does not carry the flag."""
    head = _read_slice_head(nal, pps, sao_enabled, chroma_format_idc)
    r, sao_luma, sao_chroma = head.reader, head.sao_luma, head.sao_chroma
    if pps.pps_slice_chroma_qp_offsets_present_flag:
        r.se("slice_cb_qp_offset")
        r.se("slice_cr_qp_offset")
    if pps.chroma_qp_offset_list_enabled_flag:
        r.u(1, "cu_chroma_qp_offset_enabled_flag")
    override = r.u(1, "deblocking_filter_override_flag") if pps.deblocking_filter_override_enabled_flag else 0
    deblocking_disabled = pps.pps_deblocking_filter_disabled_flag
    if override:
        deblocking_disabled = r.u(1, "slice_deblocking_filter_disabled_flag")
        if not deblocking_disabled:
            r.se("slice_beta_offset_div2")
            r.se("slice_tc_offset_div2")
    if pps.pps_loop_filter_across_slices_enabled_flag and (sao_luma or sao_chroma or not deblocking_disabled):
        return r.pos
    return None


def set_bit(nal: bytes, pos: int, value: int) -> bytes:
    """The NAL with bit ``pos`` of its unescaped payload set to ``value``, re-escaped.

    Refuses NAL units whose emulation prevention does not round-trip (never the case for a
    conforming encoder), so nothing but the one bit can change."""
    rbsp = bytearray(unescape_nal(nal))
    if escape_rbsp(bytes(rbsp)) != nal:
        raise BpgError("HEVC NAL: emulation prevention does not round-trip")
    mask = 0x80 >> (pos & 7)
    rbsp[pos >> 3] = rbsp[pos >> 3] | mask if value else rbsp[pos >> 3] & ~mask
    return escape_rbsp(bytes(rbsp))
