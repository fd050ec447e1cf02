// litcore: run PyTorch models whose weights live in a memory-mapped file.
// The one header C++ applications include.
#pragma once

#include "litcore/checksum.h"
#include "litcore/compute_threads.h"
#include "litcore/device_backend.h"
#include "litcore/dtype.h"
#include "litcore/engine.h"
#include "litcore/errors.h"
#include "litcore/fault_guard.h"
#include "litcore/format.h"
#include "litcore/mapping.h"
#include "litcore/module_loader.h"
#include "litcore/options.h"
#include "litcore/pass_model.h"
#include "litcore/read_groups.h"
#include "litcore/prefetcher.h"
#include "litcore/residency.h"
#include "litcore/script_engine.h"
#include "litcore/store.h"
#include "litcore/warmup.h"
#include "litcore/version.h"
#include "litcore/writer.h"
