// A stack's training steps for small inputs, as one C++ loop over the batches of an epoch
// (loaded by fast/native.py; the Python loop is training/stack/trainer.py's).
//
// A stack of M small networks (hidden units concatenated, each unit feeding only its own
// member's outputs) is overhead-bound in ATen: a step makes ~30 calls on tensors of a few
// thousand elements. Here each step is two passes over the hidden units (forward, then the
// lecture's back-propagation equations) and one over the parameters (the optimizer, with each
// member's hyperparameters), with no call in between. Only for inputs of a few features: a wide
// input (MNIST) is a matrix product, which ATen does better. Same rules as the Python loop
// (stack/model.py, stack/optim.py: torch.optim's single-tensor formulas), same numbers up to
// float rounding. The GIL is released while the loop runs and taken back every few steps to
// let Ctrl-C through.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

enum Task : int64_t { kBinary = 0, kMulticlass = 1, kRegression = 2 };
enum Activation : int64_t { kSigmoid = 0, kTanh = 1, kRelu = 2 };
enum Rule : int64_t { kAdam = 0, kAdamW = 1, kSgd = 2, kRmsprop = 3, kAdagrad = 4 };
// the columns of the per-member hyperparameter table
enum Column : int64_t {
  kLr = 0, kWeightDecay, kBeta1, kBeta2, kEps, kMomentum, kDampening, kAlpha, kLrDecay, kColumns
};

constexpr int64_t kStepsBetweenSignalChecks = 16;

void check_signals() {
  pybind11::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) {
    throw pybind11::error_already_set();
  }
}

// exp(x) as Cephes' expf computes it (within 2 ulp), in plain arithmetic that the compiler
// vectorizes: the loops over the hidden units below run on 8 units at a time
inline float exp_approx(float x) {
  x = std::min(88.37626f, std::max(-87.33654f, x));
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// h(z) over a range of units; then h'(z) from a = h(z): a(1-a), 1-a^2, [a > 0]
void activate(float* a, const float* z, int64_t count, int64_t activation) {
  if (activation == kSigmoid) {
    for (int64_t j = 0; j < count; ++j) a[j] = 1.0f / (1.0f + exp_approx(-z[j]));
  } else if (activation == kTanh) {
    for (int64_t j = 0; j < count; ++j) a[j] = 2.0f / (1.0f + exp_approx(-2.0f * z[j])) - 1.0f;
  } else {
    for (int64_t j = 0; j < count; ++j) a[j] = z[j] > 0.0f ? z[j] : 0.0f;
  }
}

void times_derivative(float* d, const float* a, int64_t count, int64_t activation) {
  if (activation == kSigmoid) {
    for (int64_t j = 0; j < count; ++j) d[j] *= a[j] * (1.0f - a[j]);
  } else if (activation == kTanh) {
    for (int64_t j = 0; j < count; ++j) d[j] *= 1.0f - a[j] * a[j];
  } else {
    for (int64_t j = 0; j < count; ++j) d[j] = a[j] > 0.0f ? d[j] : 0.0f;
  }
}

inline float dot(const float* u, const float* v, int64_t n) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += u[i] * v[i];
  return total;
}

// A member's hyperparameters as the inner loops use them (the per-step bias corrections too).
struct Hyper {
  float lr, weight_decay, beta1, beta2, eps, momentum, dampening, alpha, lr_decay;
  float adam_step, bias2_sqrt;  // Adam: lr / (1 - beta1^t), sqrt(1 - beta2^t)
};

Hyper member_hyper(const at::TensorAccessor<double, 2>& h, int64_t m, int64_t step) {
  Hyper x{};
  x.lr = h[m][kLr];
  x.weight_decay = h[m][kWeightDecay];
  x.beta1 = h[m][kBeta1];
  x.beta2 = h[m][kBeta2];
  x.eps = h[m][kEps];
  x.momentum = h[m][kMomentum];
  x.dampening = h[m][kDampening];
  x.alpha = h[m][kAlpha];
  x.lr_decay = h[m][kLrDecay];
  x.adam_step = h[m][kLr] / (1.0 - std::pow(h[m][kBeta1], static_cast<double>(step)));
  x.bias2_sqrt = std::sqrt(1.0 - std::pow(h[m][kBeta2], static_cast<double>(step)));
  return x;
}

// One update of the `count` elements from `i` (all of one member), by torch.optim's
// single-tensor rules; the loops vectorise, the rule is chosen outside them.
void update_run(int64_t rule, const Hyper& h, int64_t step, bool nesterov, bool centered,
                float* __restrict p, const float* __restrict g, std::vector<float*>& state,
                int64_t i, int64_t count) {
  p += i;
  g += i;
  if (rule == kAdam || rule == kAdamW) {
    float* __restrict m = state[0] + i;
    float* __restrict v = state[1] + i;
    const float decay = 1.0f - h.lr * h.weight_decay, l2 = rule == kAdam ? h.weight_decay : 0.0f;
    const float keep = rule == kAdamW ? decay : 1.0f;
    for (int64_t k = 0; k < count; ++k) {
      const float grad = g[k] + l2 * p[k];
      p[k] *= keep;
      m[k] += (grad - m[k]) * (1.0f - h.beta1);
      v[k] = v[k] * h.beta2 + (1.0f - h.beta2) * grad * grad;
      p[k] -= h.adam_step * m[k] / (std::sqrt(v[k]) / h.bias2_sqrt + h.eps);
    }
  } else if (rule == kSgd) {
    float* __restrict buffer = state[0] + i;
    for (int64_t k = 0; k < count; ++k) {
      float grad = g[k] + h.weight_decay * p[k];
      if (h.momentum != 0.0f) {
        buffer[k] = step == 1 ? grad : buffer[k] * h.momentum + (1.0f - h.dampening) * grad;
        grad = nesterov ? grad + h.momentum * buffer[k] : buffer[k];
      }
      p[k] -= h.lr * grad;
    }
  } else if (rule == kRmsprop) {
    float* __restrict square_avg = state[0] + i;
    float* __restrict grad_avg = state[1] + i;
    float* __restrict buffer = state[2] + i;
    for (int64_t k = 0; k < count; ++k) {
      const float grad = g[k] + h.weight_decay * p[k];
      square_avg[k] = square_avg[k] * h.alpha + (1.0f - h.alpha) * grad * grad;
      float avg;
      if (centered) {
        grad_avg[k] += (grad - grad_avg[k]) * (1.0f - h.alpha);
        avg = std::sqrt(square_avg[k] - grad_avg[k] * grad_avg[k]) + h.eps;
      } else {
        avg = std::sqrt(square_avg[k]) + h.eps;
      }
      if (h.momentum != 0.0f) {
        buffer[k] = buffer[k] * h.momentum + grad / avg;
        p[k] -= h.lr * buffer[k];
      } else {
        p[k] -= h.lr * grad / avg;
      }
    }
  } else {  // Adagrad
    float* __restrict sum = state[0] + i;
    const float decayed = h.lr / (1.0f + static_cast<float>(step - 1) * h.lr_decay);
    for (int64_t k = 0; k < count; ++k) {
      const float grad = g[k] + h.weight_decay * p[k];
      sum[k] += grad * grad;
      p[k] -= decayed * grad / (std::sqrt(sum[k]) + h.eps);
    }
  }
}

// One optimizer step over the flat buffer (laid out as stack_train_steps says), each member's
// runs of elements with its own hyperparameters.
void optimizer_step(int64_t rule, int64_t step, bool nesterov, bool centered, float* p,
                    const float* g, std::vector<float*>& state, const int64_t* starts,
                    const int64_t* member_of_position, int64_t members, int64_t inputs,
                    int64_t outputs, const at::TensorAccessor<double, 2>& table) {
  const int64_t units = starts[members];
  const int64_t b_h = inputs * units, w_o = b_h + units, b_o = w_o + outputs * units;
  for (int64_t m = 0; m < members; ++m) {
    const Hyper h = member_hyper(table, member_of_position[m], step);
    const int64_t first = starts[m], count = starts[m + 1] - first;
    for (int64_t k = 0; k < inputs; ++k) {
      update_run(rule, h, step, nesterov, centered, p, g, state, k * units + first, count);
    }
    update_run(rule, h, step, nesterov, centered, p, g, state, b_h + first, count);
    for (int64_t c = 0; c < outputs; ++c) {
      update_run(rule, h, step, nesterov, centered, p, g, state, w_o + c * units + first, count);
    }
    update_run(rule, h, step, nesterov, centered, p, g, state, b_o + m * outputs, outputs);
  }
}

inline void axpy(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// The stack's shapes and parameters, as the loops below read them.
struct Net {
  int64_t inputs, outputs, members, units;
  const int64_t* starts;  // member_start
  const int64_t* range_start;
  const int64_t* range_kind;
  int64_t ranges;
  const float *w_h, *b_h, *w_o, *b_o;

  Net(const at::Tensor& flat, int64_t inputs_, int64_t outputs_, const at::Tensor& member_start,
      const at::Tensor& activation_start, const at::Tensor& activation_kind)
      : inputs(inputs_), outputs(outputs_), members(member_start.size(0) - 1),
        starts(member_start.data_ptr<int64_t>()),
        range_start(activation_start.data_ptr<int64_t>()),
        range_kind(activation_kind.data_ptr<int64_t>()), ranges(activation_kind.size(0)) {
    units = starts[members];
    w_h = flat.data_ptr<float>();  // [k * units + j]
    b_h = w_h + inputs * units;
    w_o = b_h + units;  // [c * units + j]
    b_o = w_o + outputs * units;
  }

  // a_H = h(W_H x + b_H) unit by unit into `a` (`z` a scratch row); each member's logits sum
  // its own units, into `logits` (M * d_out, by position)
  void forward(const float* x, float* z, float* a, float* logits) const {
    std::copy(b_h, b_h + units, z);
    for (int64_t k = 0; k < inputs; ++k) axpy(z, w_h + k * units, x[k], units);
    for (int64_t r = 0; r < ranges; ++r) {
      const int64_t first = range_start[r];
      activate(a + first, z + first, range_start[r + 1] - first, range_kind[r]);
    }
    for (int64_t m = 0; m < members; ++m) {
      const int64_t first = starts[m], count = starts[m + 1] - first;
      for (int64_t c = 0; c < outputs; ++c) {
        logits[m * outputs + c] = b_o[m * outputs + c] + dot(a + first, w_o + c * units + first, count);
      }
    }
  }
};

// Every member's logits for the rows of x: an evaluation's forward pass.
void stack_logits(const at::Tensor& x, at::Tensor& logits, const at::Tensor& flat,
                  int64_t outputs, const at::Tensor& member_start,
                  const at::Tensor& activation_start, const at::Tensor& activation_kind) {
  TORCH_CHECK(flat.is_contiguous() && x.is_contiguous() && logits.is_contiguous(), "contiguous");
  const Net net(flat, x.size(1), outputs, member_start, activation_start, activation_kind);
  std::vector<float> z(net.units), a(net.units);
  const int64_t width = net.members * outputs;
  for (int64_t i = 0; i < x.size(0); ++i) {
    net.forward(x.data_ptr<float>() + i * net.inputs, z.data(), a.data(),
                logits.data_ptr<float>() + i * width);
  }
}

// Each member's mean loss and share of correct decisions (rows 0 and 1 of the result, by
// position) over the samples of `logits` (n x M*d_out) against targets y: BCE on logits,
// cross-entropy or squared error, as training.model's losses compute them.
at::Tensor stack_metrics(const at::Tensor& logits, const at::Tensor& y, int64_t task,
                         int64_t outputs) {
  TORCH_CHECK(logits.is_contiguous() && y.is_contiguous(), "contiguous");
  const int64_t n = logits.size(0), width = logits.size(1), members = width / outputs;
  std::vector<double> loss(members), correct(members);
  const float* z = logits.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = z + i * width;
    for (int64_t m = 0; m < members; ++m) {
      const float* zm = zi + m * outputs;
      if (task == kBinary) {
        const float target = y.data_ptr<float>()[i], v = zm[0];
        loss[m] += std::max(v, 0.0f) - v * target + std::log1p(std::exp(-std::fabs(v)));
        correct[m] += (v > 0.0f ? 1.0f : 0.0f) == target;
      } else if (task == kMulticlass) {
        const int64_t target = y.data_ptr<int64_t>()[i];
        const int64_t best = std::max_element(zm, zm + outputs) - zm;
        double total = 0.0;
        for (int64_t c = 0; c < outputs; ++c) total += std::exp(zm[c] - zm[best]);
        loss[m] += zm[best] + std::log(total) - zm[target];
        correct[m] += best == target;
      } else {
        const float* target = y.data_ptr<float>() + i * outputs;
        for (int64_t c = 0; c < outputs; ++c) {
          loss[m] += (zm[c] - target[c]) * (zm[c] - target[c]) / outputs;
        }
      }
    }
  }
  at::Tensor result = at::empty({2, members}, logits.options());
  for (int64_t m = 0; m < members; ++m) {
    result[0][m] = loss[m] / n;
    result[1][m] = task == kRegression ? NAN : correct[m] / n;
  }
  return result;
}

// The batches order[0:B], order[B:2B], ... of one epoch, sample by sample, each loop running
// over the hidden units. flat/grad hold W_H (stored d_in x H), b_H (H), W_O (stored d_out x H:
// each unit's weights to its member's outputs) and b_O (M*d_out) in one buffer; the members sit
// in the buffer by position, member p owning units member_start[p] .. member_start[p+1] and
// outputs p*d_out .. p*d_out + d_out; activation_start/activation_kind: the ranges of units of
// each activation. member_of_position[p]: the member (callers' order) at position p, whose row
// of `hyper` holds its hyperparameters. Writes each sample's logits (by position) into
// `logits`; returns the optimizer's step count after the epoch.
int64_t stack_train_steps(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& y_shuffled,
    at::Tensor& logits, int64_t batch_size, int64_t task, at::Tensor& flat, at::Tensor& grad,
    const at::Tensor& member_start, const at::Tensor& activation_start,
    const at::Tensor& activation_kind, int64_t outputs, int64_t rule, int64_t step,
    bool nesterov, bool centered, std::vector<at::Tensor> state,
    const at::Tensor& member_of_position, const at::Tensor& hyper) {
  TORCH_CHECK(flat.is_contiguous() && grad.is_contiguous() && x.is_contiguous(), "contiguous");
  const Net net(flat, x.size(1), outputs, member_start, activation_start, activation_kind);
  const int64_t n = x.size(0), inputs = net.inputs, members = net.members, units = net.units;
  const int64_t* starts = net.starts;
  const int64_t numel = flat.numel(), width = members * outputs;
  float* p = flat.data_ptr<float>();
  float* g = grad.data_ptr<float>();
  const float* w_o = net.w_o;
  float* grad_w_h = g;
  float* grad_b_h = grad_w_h + inputs * units;
  float* grad_w_o = grad_b_h + units;
  float* grad_b_o = grad_w_o + outputs * units;
  const float* xs = x.data_ptr<float>();
  const int64_t* orders = order.data_ptr<int64_t>();
  float* out = logits.data_ptr<float>();
  std::vector<float*> buffers;
  for (auto& tensor : state) buffers.push_back(tensor.data_ptr<float>());
  const int64_t* position_member = member_of_position.data_ptr<int64_t>();
  const auto table = hyper.accessor<double, 2>();
  std::vector<float> z(units), a(units), d(units), d_zo(width);
  int64_t steps_done = 0;
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t batch = std::min(begin + batch_size, n) - begin;
    std::fill(g, g + numel, 0.0f);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t sample = begin + b;
      const float* xb = xs + orders[sample] * inputs;
      float* zo = out + sample * width;
      net.forward(xb, z.data(), a.data(), zo);
      // dJ/dZ_O of each member's mean loss: sigmoid - y, softmax - one-hot, 2(Z_O - Y)/BC
      if (task == kBinary) {
        const float y = y_shuffled.data_ptr<float>()[sample];
        for (int64_t m = 0; m < members; ++m) {
          d_zo[m] = (1.0f / (1.0f + exp_approx(-zo[m])) - y) / batch;
        }
      } else if (task == kMulticlass) {
        const int64_t y = y_shuffled.data_ptr<int64_t>()[sample];
        for (int64_t m = 0; m < members; ++m) {
          const float* zm = zo + m * outputs;
          float* dm = &d_zo[m * outputs];
          const float top = *std::max_element(zm, zm + outputs);
          float total = 0.0f;
          for (int64_t c = 0; c < outputs; ++c) total += dm[c] = std::exp(zm[c] - top);
          for (int64_t c = 0; c < outputs; ++c) dm[c] = (dm[c] / total - (c == y ? 1.0f : 0.0f)) / batch;
        }
      } else {
        const float* y = y_shuffled.data_ptr<float>() + sample * outputs;
        for (int64_t i = 0; i < width; ++i) {
          d_zo[i] = 2.0f * (zo[i] - y[i % outputs]) / (batch * outputs);
        }
      }
      // backward: dW_O = dZ_O^T A_H, db_O = sum dZ_O, dZ_H = (dZ_O W_O) h'(Z_H), dW_H = dZ_H^T X
      for (int64_t i = 0; i < width; ++i) grad_b_o[i] += d_zo[i];
      for (int64_t m = 0; m < members; ++m) {
        const int64_t first = starts[m], count = starts[m + 1] - first;
        for (int64_t c = 0; c < outputs; ++c) {
          const float dv = d_zo[m * outputs + c];
          const float* w = w_o + c * units + first;
          float* dm = &d[first];
          if (c == 0) {
            for (int64_t j = 0; j < count; ++j) dm[j] = dv * w[j];
          } else {
            axpy(dm, w, dv, count);
          }
          axpy(grad_w_o + c * units + first, &a[first], dv, count);
        }
      }
      for (int64_t r = 0; r < net.ranges; ++r) {
        const int64_t first = net.range_start[r];
        times_derivative(&d[first], &a[first], net.range_start[r + 1] - first, net.range_kind[r]);
      }
      for (int64_t j = 0; j < units; ++j) grad_b_h[j] += d[j];
      for (int64_t k = 0; k < inputs; ++k) axpy(grad_w_h + k * units, d.data(), xb[k], units);
    }
    optimizer_step(rule, ++step, nesterov, centered, p, g, buffers, starts, position_member,
                   members, inputs, outputs, table);
    if (++steps_done % kStepsBetweenSignalChecks == 0) {
      check_signals();
    }
  }
  return step;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stack_logits", &stack_logits, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Every member's logits for the rows of x.");
  m.def("stack_metrics", &stack_metrics, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Every member's mean loss and accuracy from its logits.");
  m.def("stack_train_steps", &stack_train_steps,
        pybind11::call_guard<pybind11::gil_scoped_release>(),
        "An epoch of a stack's training steps (hand-derived gradients + its optimizer).");
}
