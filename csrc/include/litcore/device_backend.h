// Device backends: what a device does with a unit's weights once the engine has brought
// their bytes into host memory. The engine decides what is read, when, and what stays
// (the policy); a backend only binds and moves bytes, and holds no policy.
#pragma once

#include <string>

namespace litcore {

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual std::string device() const = 0;
  // `unit` is about to run and its bytes are in host memory: make the tensors its module
  // reads valid (on a GPU: views of the device ring slot its bytes were copied into).
  virtual void bind(int unit) = 0;
  // `unit` has run: its tensors may stop being valid (on a GPU: its ring slot is freed once
  // the kernels queued so far have run).
  virtual void unbind(int unit) = 0;
};

// On the CPU a module's weights are always views of the file's mapping (or of memory the
// engine owns), valid at every moment: bringing the bytes in is all there is to do.
class CpuBackend final : public DeviceBackend {
 public:
  std::string device() const override { return "cpu"; }
  void bind(int) override {}
  void unbind(int) override {}
};

}  // namespace litcore
