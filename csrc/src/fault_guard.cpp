// The SIGBUS handler and the table of watched mappings it reads. The handler only reads
// atomics and calls mmap, so it is safe to run on any thread at any moment.
#include "litcore/fault_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "litcore/errors.h"

namespace litcore {
namespace {

constexpr int kSlots = 256;  // mappings watched at once; beyond that a fault is not survived

struct Watched {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<uint64_t> faults{0};
  std::atomic<uintptr_t> first_fault{0};  // offset of the first faulting byte, + 1
};

Watched g_watched[kSlots];
std::mutex g_slots_mu;  // guards taking and freeing slots (never taken in the handler)
struct sigaction g_previous;
std::once_flag g_installed;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (auto& w : g_watched) {
    uintptr_t begin = w.begin.load(std::memory_order_acquire);
    if (begin == 0 || addr < begin || addr >= w.end.load(std::memory_order_acquire)) continue;
    uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    void* at = reinterpret_cast<void*>(addr / page * page);
    if (mmap(at, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) break;
    uintptr_t none = 0;
    w.first_fault.compare_exchange_strong(none, addr - begin + 1);
    w.faults.fetch_add(1);
    return;  // the access is retried and reads zeros
  }
  // Not ours: what would have happened without litcore.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) {
      g_previous.sa_sigaction(sig, info, context);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // returning re-runs the access, which now kills the process as usual
}

void install() {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, &g_previous);
}

}  // namespace

FaultGuard::FaultGuard(const void* addr, size_t size, const std::string& path) : path_(path) {
  if (!addr || size == 0) return;
  std::call_once(g_installed, install);
  std::lock_guard<std::mutex> lock(g_slots_mu);
  for (int i = 0; i < kSlots; ++i) {
    if (g_watched[i].begin.load() != 0) continue;
    g_watched[i].faults = 0;
    g_watched[i].first_fault = 0;
    g_watched[i].end.store(reinterpret_cast<uintptr_t>(addr) + size, std::memory_order_release);
    g_watched[i].begin.store(reinterpret_cast<uintptr_t>(addr), std::memory_order_release);
    slot_ = i;
    return;
  }
}

FaultGuard::~FaultGuard() {
  if (slot_ < 0) return;
  std::lock_guard<std::mutex> lock(g_slots_mu);
  g_watched[slot_].begin.store(0, std::memory_order_release);
  g_watched[slot_].end.store(0, std::memory_order_release);
}

void FaultGuard::check() const {
  if (slot_ < 0 || g_watched[slot_].faults.load(std::memory_order_acquire) == 0) return;
  uint64_t offset = g_watched[slot_].first_fault.load() - 1;
  throw IOError("litcore: '" + path_ + "' was truncated or became unreadable while in use: reading byte " +
                std::to_string(offset) + " of its mapping failed (" +
                std::to_string(g_watched[slot_].faults.load()) +
                " page(s) read as zeros); results computed since are invalid. Reopen the file once it is whole.",
                EIO);
}

}  // namespace litcore
