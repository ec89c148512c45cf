// kernels_isa.h: the body of one instruction-set library. Each isa_*.cpp defines RNNFAST_VBYTES and
// RNNFAST_ISA_NAME, includes this file once, and is built alone into its own shared library with the
// matching -m flags and hidden visibility (CMakeLists.txt): no inline or template function compiled for a
// wide instruction set can be shared with, or chosen by the linker for, code that runs before the CPU check.
#include <algorithm>

#include "kernels.h"
#include "probe.h"
#include "recurrence.h"
#include "recurrence_gru_original.h"
#include "recurrence_lstm_proj.h"

namespace {

// The one switch on the cell: the two-phase recurrences, or the single-phase one instantiated for the cell.
template <typename T>
void forward_entry(const rnnfast::cpu::ForwardCall<T>& c, int threads) {
    if (c.cell == rnnfast::kGruOriginal) return gru_original_forward<T>(c, threads);
    if (c.P > 0) return lstm_proj_forward<T>(c, threads);
    rnnfast::with_single_phase_cell(c.cell, [&](auto cell) { recurrence_forward<decltype(cell), T>(c, threads); });
}

template <typename T>
void backward_entry(const rnnfast::cpu::BackwardCall<T>& c, int threads) {
    if (c.cell == rnnfast::kGruOriginal) return gru_original_backward<T>(c, threads);
    if (c.P > 0) return lstm_proj_backward<T>(c, threads);
    rnnfast::with_single_phase_cell(c.cell, [&](auto cell) { recurrence_backward<decltype(cell), T>(c, threads); });
}

// The threads a time-parallel GEMM asks for: exactly -threads when threads < 0 (tests), else one per 2 MFLOP of
// the product, at most what team_request grants of `threads` (threads.h: one while the teams are starved).
inline int gemm_threads(int threads, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K) {
    const double flops = 2.0 * M * N * K;
    return threads < 0 ? -threads : std::max(1, std::min<int>(team_request(threads), static_cast<int>(flops / 2e6)));
}

// The team for a split of C into `units` (panels or tiles): the threads asked for, at most one per unit.
inline int team_for(int asked, ptrdiff_t units) {
    return static_cast<int>(std::max<ptrdiff_t>(1, std::min<ptrdiff_t>(asked, units)));
}

// Runs f(tid, q0, q1) on a team of nt threads, thread tid on the units [q0, q1) of `units`.
template <typename F>
void run_shares(int nt, ptrdiff_t units, F&& f) {
    run_team(nt, [&](int tid, int team, Barrier&) { f(tid, units * tid / team, units * (tid + 1) / team); });
}

// Splits C by columns (panel-aligned) or by rows (tile-aligned). Every thread packs all of the operand it does not
// split (by columns: all of A, M x K; by rows: all of B, K x N), so the split goes along the longer side of C
// while that side has work for every thread: dx = dG W_ih (6400 x 256 from 6400 x 2048) split by columns made
// each of two threads pack the whole 52 MB dG, and ran at 248 GFLOP/s. The split never changes a sum's order.
template <typename T>
void gemm_entry(const rnnfast::cpu::GemmCall<T>& g, int threads) {
    constexpr int NR = Tile<T>::NR;
    const GemmVariant& v = variant_of<T>(g.variant, 0);
    const int MR = v.mr, ku = ku_for(g.M), asked = gemm_threads(threads, g.M, g.N, g.K);
    const bool cols_enough = g.N >= static_cast<ptrdiff_t>(asked) * 4 * NR;
    const bool rows_enough = g.M >= static_cast<ptrdiff_t>(asked) * 4 * MR;
    const bool by_cols = cols_enough && (g.N >= g.M || !rows_enough);
    const ptrdiff_t units = by_cols ? (g.N + NR - 1) / NR : (g.M + MR - 1) / MR;
    const int nt = team_for(asked, units);
    std::vector<GemmBuffers<T>> buffers = gemm_buffer_pool<T>().take(nt, v);
    run_shares(nt, units, [&](int tid, ptrdiff_t q0, ptrdiff_t q1) {
        if (by_cols)
            gemm_block<T>(v, ku, 0, g.M, q0 * NR, std::min(g.N, q1 * NR), g.K, g.a, g.a_rs, g.a_ks, g.b, g.b_ks,
                          g.b_ns, g.c, g.ldc, g.accumulate, buffers[static_cast<size_t>(tid)]);
        else
            gemm_block<T>(v, ku, q0 * MR, std::min(g.M, q1 * MR), 0, g.N, g.K, g.a, g.a_rs, g.a_ks, g.b, g.b_ks,
                          g.b_ns, g.c, g.ldc, g.accumulate, buffers[static_cast<size_t>(tid)]);
    });
    gemm_buffer_pool<T>().give(std::move(buffers));
}

template <typename T>
void pack_matrix_t_entry(const T* w, ptrdiff_t N, ptrdiff_t K, T* out) {
    pack_panels<T>(w, 1, K, 0, K, 0, N, out);
}

template <typename T>
void gemm_packed_entry(const rnnfast::cpu::PackedGemmCall<T>& g, int threads) {
    constexpr int NR = Tile<T>::NR;
    const GemmVariant& v = variant_of<T>(g.variant, 0);
    const int MR = v.mr, ku = ku_for(g.M), asked = gemm_threads(threads, g.M, g.N, g.K);
    const ptrdiff_t panels = (g.N + NR - 1) / NR, tiles = (g.M + MR - 1) / MR;
    const bool by_cols = panels >= static_cast<ptrdiff_t>(asked) * 4 || panels >= tiles;
    const ptrdiff_t units = by_cols ? panels : tiles;
    run_shares(team_for(asked, units), units, [&](int, ptrdiff_t q0, ptrdiff_t q1) {
        if (by_cols)
            gemm_rows_panels<T>(v, ku, g.M, std::min(g.N, q1 * NR) - q0 * NR, g.K, g.a, g.a_rs, g.a_ks,
                                g.bp + q0 * NR * g.K, g.c + q0 * NR, g.ldc, g.accumulate);
        else
            gemm_rows_panels<T>(v, ku, std::min(g.M, q1 * MR) - q0 * MR, g.N, g.K, g.a + q0 * MR * g.a_rs, g.a_rs,
                                g.a_ks, g.bp, g.c + q0 * MR * g.ldc, g.ldc, g.accumulate);
    });
}

template <typename T>
rnnfast::cpu::VariantInfo variant_info(int index) {
    if (index < 0 || index >= Variants<T>::count) return {nullptr, 0, 0, false};
    const GemmVariant& v = Variants<T>::list[index];
    return {v.name, v.mr, v.a_block, v.tiles_outer};
}

template <typename T>
int chosen_variant_entry(int which) {
    return chosen_variant<T>(which != 0).load(std::memory_order_relaxed);
}

template <typename T>
void choose_variant_entry(int which, int index) {
    if (index >= 0 && index < Variants<T>::count) chosen_variant<T>(which != 0).store(index, std::memory_order_relaxed);
}

// n == 1: the call with up to `threads` threads; n > 1: the calls at once, one thread each (a thread takes
// the calls tid, tid + team, ...), since a direction's own split would cost a barrier per step.
template <typename Call, typename F>
void run_calls(const Call* calls, int n, int threads, F one) {
    if (n == 1) {
        one(calls[0], threads);
        return;
    }
    const int team_size = std::max(1, std::min(n, team_request(threads)));
    run_team(team_size, [&](int tid, int team, Barrier&) {
        for (int i = tid; i < n; i += team) one(calls[i], 1);
    });
}

template <typename T>
void forward_many(const rnnfast::cpu::ForwardCall<T>* calls, int n, int threads) {
    run_calls(calls, n, threads, [](const rnnfast::cpu::ForwardCall<T>& c, int t) { forward_entry<T>(c, t); });
}

template <typename T>
void backward_many(const rnnfast::cpu::BackwardCall<T>* calls, int n, int threads) {
    run_calls(calls, n, threads, [](const rnnfast::cpu::BackwardCall<T>& c, int t) { backward_entry<T>(c, t); });
}

template <typename T>
rnnfast::cpu::Table<T> make_table() {
    return {Tile<T>::NR, &packed_size_forward<T>, &packed_size_backward<T>, &pack_forward<T>, &pack_backward<T>,
            &forward_many<T>, &backward_many<T>, &gemm_entry<T>, &pack_matrix_t_entry<T>, &gemm_packed_entry<T>,
            Variants<T>::count, &variant_info<T>, &chosen_variant_entry<T>, &choose_variant_entry<T>};
}

int64_t starved_team_calls_entry() { return TeamPressure::instance().starved_calls(); }
bool teams_solo_entry() { return TeamPressure::instance().solo(); }

int crossing_macs_entry(int macs) {
    if (macs > 0) crossing_macs().store(macs, std::memory_order_relaxed);
    return crossing_macs().load(std::memory_order_relaxed);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const rnnfast::cpu::Isa* rnnfast_cpu_kernels(int abi) {
    static const rnnfast::cpu::Isa table{RNNFAST_ISA_NAME, make_table<float>(), make_table<double>(),
                                         {bf16_runs_natively() ? 1 : 0, &packed_size_forward_bf16, &pack_forward_bf16,
                                          &round_bf16},
                                         &read_gbps, &crossing_macs_entry, &starved_team_calls_entry,
                                         &teams_solo_entry};
    return abi == rnnfast::cpu::kAbiVersion ? &table : nullptr;
}
