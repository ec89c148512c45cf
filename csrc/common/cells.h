// cells.h: the pointwise forward and backward of every cell, written once.
//
// This is the only place where the cell equations exist in C++. The CPU kernels instantiate these
// templates with SIMD vectors (one call = one vector of hidden units) and with scalars for the tail;
// the CUDA kernels instantiate them with float on the device.
//
// Template parameters:
//   M  the math policy: M::sigmoid(V), M::tanh(V), M::relu(V), M::pos(V) (1 where v > 0 else 0), M::c(double)
//   V  the value type: a scalar (float, double) or a SIMD vector of them
//
// Naming, per hidden unit (gate order as torch.nn):
//   x*   input pre-activation of a gate:     (W_ih x_t)[gate] + b_ih[gate]
//   h*   recurrent pre-activation of a gate: (W_hh h_{t-1})[gate] + b_hh[gate]
//   d*x  gradient w.r.t. the input pre-activation, d*h w.r.t. the recurrent one. They differ only
//        where the recurrent term is not simply added (the GRU candidate gate).
#pragma once

#if defined(__CUDACC__)
#define RNNFAST_HD __host__ __device__ __forceinline__
#else
#define RNNFAST_HD inline __attribute__((always_inline))
#endif

// ---------------------------------------------------------------- RNN, tanh and relu
// h' = act(x + h)
template <class M, class V>
RNNFAST_HD V rnn_tanh_forward(V x, V h) { return M::tanh(x + h); }

template <class M, class V>
RNNFAST_HD V rnn_relu_forward(V x, V h) { return M::relu(x + h); }

// dh_out: gradient w.r.t. h'; h_out: h'. Returns the gradient w.r.t. the pre-activation.
template <class M, class V>
RNNFAST_HD V rnn_tanh_backward(V h_out, V dh_out) { return dh_out * (M::c(1.0) - h_out * h_out); }

template <class M, class V>
RNNFAST_HD V rnn_relu_backward(V h_out, V dh_out) { return dh_out * M::pos(h_out); }

// ---------------------------------------------------------------- LSTM
// i,f,g,o = sigmoid, sigmoid, tanh, sigmoid of (x* + h*); c' = f*c + i*g; h' = o*tanh(c')
// Stores the activated gates (what backward needs, with c and c').
template <class M, class V>
RNNFAST_HD void lstm_forward(V xi, V xf, V xg, V xo, V hi, V hf, V hg, V ho, V c,
                             V& i, V& f, V& g, V& o, V& c_out, V& h_out) {
    i = M::sigmoid(xi + hi);
    f = M::sigmoid(xf + hf);
    g = M::tanh(xg + hg);
    o = M::sigmoid(xo + ho);
    c_out = f * c + i * g;
    h_out = o * M::tanh(c_out);
}

// dh_out: total gradient w.r.t. h' (from the output and from step t+1); dc_out: gradient w.r.t. c'
// from step t+1. Produces the four pre-activation gradients (shared by x* and h*) and dc for c.
template <class M, class V>
RNNFAST_HD void lstm_backward(V i, V f, V g, V o, V c, V c_out, V dh_out, V dc_out,
                              V& di, V& df, V& dg, V& d_o, V& dc) {
    const V one = M::c(1.0);
    const V tc = M::tanh(c_out);
    const V dct = dc_out + dh_out * o * (one - tc * tc);
    d_o = dh_out * tc * o * (one - o);
    di = dct * g * i * (one - i);
    dg = dct * i * (one - g * g);
    df = dct * c * f * (one - f);
    dc = dct * f;
}

// ---------------------------------------------------------------- GRU, linear_before_reset=True
// r,z = sigmoid(x* + h*); n = tanh(xn + r*hn); h' = (1-z)*n + z*h. hn includes b_hn and is kept
// for backward with r, z, n.
template <class M, class V>
RNNFAST_HD void gru_forward(V xr, V xz, V xn, V hr, V hz, V hn, V h,
                            V& r, V& z, V& n, V& h_out) {
    r = M::sigmoid(xr + hr);
    z = M::sigmoid(xz + hz);
    n = M::tanh(xn + r * hn);
    h_out = (M::c(1.0) - z) * n + z * h;
}

// dh_out: total gradient w.r.t. h'. Produces dr, dz (shared by x* and h*), dnx (w.r.t. xn),
// dnh (w.r.t. hn) and dh, the direct part of the gradient w.r.t. h (the W_hh part is added by GEMM).
template <class M, class V>
RNNFAST_HD void gru_backward(V r, V z, V n, V hn, V h, V dh_out,
                             V& dr, V& dz, V& dnx, V& dnh, V& dh) {
    const V one = M::c(1.0);
    dnx = dh_out * (one - z) * (one - n * n);
    dz = dh_out * (h - n) * z * (one - z);
    dr = dnx * hn * r * (one - r);
    dnh = dnx * r;
    dh = dh_out * z;
}

// ---------------------------------------------------------------- GRU, linear_before_reset=False (original form)
// r,z = sigmoid(x* + h*); n = tanh(xn + W_hn (r*h) + b_hn); h' = (1-z)*n + z*h.
// The candidate needs r*h of every unit before its recurrent product, so a step has two phases.
// Phase 1: the gates and r*h (what the W_hn product reads).
template <class M, class V>
RNNFAST_HD void gru_original_gates(V xr, V xz, V hr, V hz, V h, V& r, V& z, V& rh) {
    r = M::sigmoid(xr + hr);
    z = M::sigmoid(xz + hz);
    rh = r * h;
}

// Phase 2: hn = W_hn (r*h) + b_hn; returns h'.
template <class M, class V>
RNNFAST_HD V gru_original_output(V xn, V hn, V z, V h, V& n) {
    n = M::tanh(xn + hn);
    return (M::c(1.0) - z) * n + z * h;
}

// Backward phase 1, from dh_out (total gradient w.r.t. h'): dn (w.r.t. both xn and hn), dz, and the
// direct part of dh.
template <class M, class V>
RNNFAST_HD void gru_original_backward_output(V z, V n, V h, V dh_out, V& dn, V& dz, V& dh) {
    const V one = M::c(1.0);
    dn = dh_out * (one - z) * (one - n * n);
    dz = dh_out * (h - n) * z * (one - z);
    dh = dh_out * z;
}

// Backward phase 2, once drh = W_hn^T dn (gradient w.r.t. r*h) is known: dr, and drh's share of dh.
template <class M, class V>
RNNFAST_HD void gru_original_backward_gates(V r, V h, V drh, V& dr, V& dh) {
    dr = drh * h * r * (M::c(1.0) - r);
    dh = dh + drh * r;
}
