// The one TORCH_LIBRARY(litcore, ...) registration: TorchScript programs reach the
// store through torch.classes.litcore.Store, from Python or from C++ (torch::jit::load).
#include <torch/custom_class.h>
#include <torch/library.h>

#include "litcore/script_store.h"

namespace litcore {
namespace {

using Self = c10::intrusive_ptr<ScriptStore>;

TORCH_LIBRARY(litcore, m) {
  m.class_<ScriptStore>("Store")
      .def(torch::init<std::string>())
      .def("path", [](const Self& self) { return self->store->path(); })
      .def("keys", [](const Self& self) { return self->store->keys(); })
      .def("contains", [](const Self& self, const std::string& name) { return self->store->contains(name); })
      .def("__len__", [](const Self& self) { return static_cast<int64_t>(self->store->size()); })
      .def("get", [](const Self& self, const std::string& name) { return self->store->get(name); })
      .def("prefetch", [](const Self& self, const std::vector<std::string>& names) { self->store->prefetch(names); })
      .def("release", [](const Self& self, const std::vector<std::string>& names) { self->store->release(names); })
      .def("configure", [](const Self& self, const std::vector<std::vector<std::string>>& groups,
                           const c10::List<bool>& streamable, const c10::List<bool>& on_demand, int64_t budget_bytes) {
        self->configure(groups, std::vector<bool>(streamable.begin(), streamable.end()),
                        std::vector<bool>(on_demand.begin(), on_demand.end()), budget_bytes);
      })
      .def("enter", &ScriptStore::enter)
      .def("exit", &ScriptStore::exit)
      .def("streams", [](const Self& self) { return self->plan.streams(); })
      .def("resident_bytes", [](const Self& self) { return static_cast<int64_t>(self->plan.resident_bytes); })
      .def("bytes_read", [](const Self& self) {
        return self->prefetcher ? static_cast<int64_t>(self->prefetcher->stats().bytes_read) : int64_t{0};
      })
      .def_pickle(
          // Pickled by path: a saved TorchScript program reopens the file when loaded.
          [](const Self& self) -> std::string { return self->store->path(); },
          [](std::string path) { return c10::make_intrusive<ScriptStore>(path); });
}

}  // namespace
}  // namespace litcore
