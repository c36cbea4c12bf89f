// The training steps of sweeplab's 2-layer network with the lecture's hand-derived gradients and
// Adam/AdamW, as one C++ loop over the batches of an epoch (loaded by fast/native.py).
//
// Every step makes exactly the ATen calls of the Python loop (backprop.ManualBackprop._step, then
// lean_adam.LeanAdam._lean_step) in the same order, so the weights come out bit-identical; what
// goes away is Python's cost around each call. The GIL is released while the loop runs and taken
// back every few steps to let Ctrl-C through.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <vector>

namespace {

enum Task : int64_t { kBinary = 0, kMulticlass = 1, kRegression = 2 };
enum Activation : int64_t { kSigmoid = 0, kTanh = 1, kRelu = 2 };

constexpr int64_t kStepsBetweenSignalChecks = 16;

at::Tensor activate(const at::Tensor& z, int64_t activation) {
  switch (activation) {
    case kSigmoid: return at::sigmoid(z);
    case kTanh: return at::tanh(z);
    default: return at::relu(z);
  }
}

// dJ/dZ_H from dJ/dA_H with the kernels autograd uses (see backprop._ACTIVATION_BACKWARD)
at::Tensor activation_backward(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& a, int64_t activation) {
  switch (activation) {
    case kSigmoid: return at::sigmoid_backward(grad, a);
    case kTanh: return at::tanh_backward(grad, a);
    default: return at::threshold_backward(grad, z, 0);
  }
}

void check_signals() {
  pybind11::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) {
    throw pybind11::error_already_set();
  }
}

// Steps over the batches order[start:start+B], order[start+B:...], ... to the end of the epoch.
// params/grads: W_H, b_H, W_O, b_O and their .grad buffers; exp_avgs .. counter: the Adam state
// of LeanAdam's plan (counter holds every parameter's step count, `steps` are views of it).
void train_steps(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& y_shuffled,
    at::Tensor& logits, int64_t batch_size, int64_t start, int64_t task, int64_t activation,
    const std::vector<at::Tensor>& params, std::vector<at::Tensor> grads,
    const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
    const std::vector<at::Tensor>& steps, at::Tensor counter, double lr, double beta1,
    double beta2, double weight_decay, double eps, bool maximize, bool decoupled_weight_decay) {
  TORCH_CHECK(params.size() == 4 && grads.size() == 4, "train_steps: W_H, b_H, W_O, b_O");
  c10::AutoGradMode no_grad(false);
  const at::Tensor& w_h = params[0];
  const at::Tensor& b_h = params[1];
  const at::Tensor& w_o = params[2];
  const at::Tensor& b_o = params[3];
  at::Tensor& grad_w_h = grads[0];
  at::Tensor& grad_b_h = grads[1];
  at::Tensor& grad_w_o = grads[2];
  at::Tensor& grad_b_o = grads[3];
  const int64_t n = x.size(0);
  at::Tensor x_buffer = at::empty({std::min(batch_size, n), x.size(1)}, x.options());
  at::Tensor minus_ones = at::full({batch_size, 1}, -1.0, logits.options());
  int64_t steps_done = 0;
  for (int64_t begin = start; begin < n; begin += batch_size) {
    const int64_t end = std::min(begin + batch_size, n);
    const int64_t batch = end - begin;
    at::Tensor x_out = x_buffer.narrow(0, 0, batch);
    at::Tensor xb = at::index_select_out(x_out, x, 0, order.slice(0, begin, end));
    at::Tensor yb = y_shuffled.slice(0, begin, end);
    at::Tensor logits_b = logits.slice(0, begin, end);
    // forward: Z_H = X W_H^T + b_H, A_H = h(Z_H), Z_O = A_H W_O^T + b_O
    at::Tensor z_h = at::addmm(b_h, xb, w_h.t());
    at::Tensor a_h = activate(z_h, activation);
    at::Tensor z_o = at::addmm_out(logits_b, b_o, a_h, w_o.t());
    // dJ/dZ_O of the batch's mean loss
    at::Tensor d_zo;
    if (task == kMulticlass) {
      d_zo = at::softmax(z_o, 1)
                 .scatter_add_(1, yb.unsqueeze(1), minus_ones.narrow(0, 0, batch))
                 .div_(batch);
    } else if (task == kBinary) {
      d_zo = at::sigmoid(z_o).sub_(yb).div_(batch);
    } else {
      d_zo = at::sub(z_o, yb).mul_(2.0 / static_cast<double>(z_o.numel()));
    }
    // backward: dW_O = dZ_O^T A_H, db_O = dZ_O^T 1, dZ_H = (dZ_O W_O) * h'(Z_H), dW_H = dZ_H^T X
    at::Tensor d_zh = activation_backward(at::mm(d_zo, w_o), z_h, a_h, activation);
    at::mm_out(grad_w_o, d_zo.t(), a_h);
    at::sum_out(grad_b_o, d_zo, 0);
    at::mm_out(grad_w_h, d_zh.t(), xb);
    at::sum_out(grad_b_h, d_zh, 0);
    // the optimizer step, as LeanAdam._lean_step makes it
    counter.add_(1);
    if (decoupled_weight_decay) {
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2,
                        weight_decay, eps, false, maximize, std::nullopt, std::nullopt);
    } else {
      at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, lr, beta1, beta2,
                       weight_decay, eps, false, maximize, std::nullopt, std::nullopt);
    }
    if (++steps_done % kStepsBetweenSignalChecks == 0) {
      check_signals();
    }
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("train_steps", &train_steps, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "The rest of an epoch's training steps (hand-derived gradients + fused Adam/AdamW).");
}
