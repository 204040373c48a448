// module.cc — plugpool._plugpool, the C++ half of `import plugpool` (__init__.py is the
// Pythonic half, built on this).
//
//   _Pool(processes, plugins, max_tasks_per_child, task_timeout_ms, crash_retries,
//         memory_bytes, cpu_seconds, open_files, start_timeout_ms)
//     .plugins() -> [(name, path, [(task, [arg types], result type, doc)])]
//     .task(plugin, name) -> _Task            (.plugin, .name, .arg_types, .result_type, .doc)
//     .map_async(task, items, chunksize, star) -> _Future  every item converted first
//     .close() .join() .shutdown(wait, cancel) .terminate_workers() .kill_workers()
//   _Future .done() .wait(timeout) .result(timeout) .exception(timeout) .cancel() .cancelled()
//           .add_done_callback(fn)   fn() runs on plugpool's callback thread, with the GIL
//
// The GIL is released while waiting, in slices of WAIT_SLICE, so that Ctrl-C reaches the
// waiting thread: its call is then cancelled and KeyboardInterrupt raised. plugpool's errors
// become the classes of plugpool._errors, with their fields.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <plugpool/pool.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "py_values.h"

namespace plugpool::python {

namespace {

using namespace std::chrono_literals;
constexpr auto WAIT_SLICE = 50ms;

// The classes of plugpool._errors, looked up once.
py::object errorClass(const char* name) {
  return py::module_::import("plugpool._errors").attr(name);
}

[[noreturn]] void raiseError(const char* name, const std::string& text, py::dict fields = {}) {
  py::object error = errorClass(name)(text, **fields);
  PyErr_SetObject(error.get_type().ptr(), error.ptr());
  throw py::error_already_set();
}

void translate(std::exception_ptr p) {
  try {
    std::rethrow_exception(p);
  } catch (const TaskError& e) {
    py::dict f;
    f["type"] = e.remoteType();
    f["message"] = e.remoteMessage();
    f["task"] = e.plugin() + "." + e.task();
    f["item"] = e.item() ? py::object(py::int_(*e.item())) : py::none();
    f["worker_pid"] = e.workerPid();
    raiseError("TaskError", e.what(), f);
  } catch (const WorkerCrashed& e) {
    py::dict f;
    f["signal"] = e.signal();
    f["exit_status"] = e.exitStatus();
    f["pid"] = e.pid();
    f["task"] = e.plugin() + "." + e.task();
    f["item"] = e.item() ? py::object(py::int_(*e.item())) : py::none();
    raiseError("WorkerCrashed", e.what(), f);
  } catch (const TaskTimeout& e) {
    py::dict f;
    f["task"] = e.plugin() + "." + e.task();
    f["timeout"] = static_cast<double>(e.timeoutMs()) / 1000;
    f["item"] = e.item() ? py::object(py::int_(*e.item())) : py::none();
    raiseError("TaskTimeout", e.what(), f);
  } catch (const Cancelled& e) {
    raiseError("Cancelled", e.what());
  } catch (const PoolBroken& e) {
    raiseError("PoolBroken", e.what());
  } catch (const PoolClosed& e) {
    raiseError("PoolClosed", e.what());
  } catch (const PluginError& e) {
    raiseError("PluginError", e.what());
  } catch (const StartError& e) {
    raiseError("StartError", e.what());
  } catch (const ProtocolError& e) {
    raiseError("ProtocolError", e.what());
  } catch (const WaitTimeout& e) {
    raiseError("WaitTimeout", e.what());
  } catch (const UsageError& e) {
    raiseError("UsageError", e.what());
  } catch (const values::ValueError& e) {
    PyErr_SetString(PyExc_TypeError, e.what());
  }
}

struct PoolHandle;

// Done callbacks not yet finished with Python, so that the interpreter's exit can wait for
// them (drain_callbacks): a thread still inside Python while the interpreter finalizes aborts.
struct Pending {
  std::mutex mutex;
  std::condition_variable none;
  std::size_t count = 0;
};
Pending& pending() {
  static auto* instance = new Pending;  // used until exit
  return *instance;
}

// One done callback: counted from add_done_callback until its callable has been dropped, with
// the GIL, and the GIL released again (this object's end, on plugpool's callback thread).
struct PendingCallback {
  py::function fn;
  explicit PendingCallback(py::function f) : fn(std::move(f)) {
    std::lock_guard lock(pending().mutex);
    ++pending().count;
  }
  PendingCallback(const PendingCallback&) = delete;
  PendingCallback& operator=(const PendingCallback&) = delete;
  ~PendingCallback() {
    {
      py::gil_scoped_acquire gil;
      fn = py::function();
    }
    std::lock_guard lock(pending().mutex);
    if (--pending().count == 0) pending().none.notify_all();
  }
};

// Waits, without the GIL, until no done callback is pending.
void drainCallbacks() {
  py::gil_scoped_release release;
  std::unique_lock lock(pending().mutex);
  pending().none.wait(lock, [] { return pending().count == 0; });
}

// A task's arguments by declared type: what converts Python values into its argument tuple.
struct Arguments {
  std::string label;  // "plugin.task", for messages
  std::vector<Type> args;
  std::vector<unsigned> slots;
  std::shared_ptr<values::Schemas> schemas;

  Arguments(const PluginInfo& plugin, const TaskInfo& task)
      : label(plugin.name + "." + task.name), schemas(std::make_shared<values::Schemas>(plugin)) {
    for (const auto& a : task.argTypes) args.push_back(values::parseType(a));
    slots = values::slotsOf(args);
  }

  // Writes the arguments of `item` (with `star`, a sequence of them; else the one argument).
  void encode(capnp::AnyStruct::Builder out, const py::object& item, bool star) const {
    PyFrom from;
    if (!star) {
      if (args.size() != 1) {
        raise(PyExc_TypeError, label + " takes " + std::to_string(args.size()) +
                                   " arguments: give each item as a tuple (starmap)");
      }
      return values::encode(from, *schemas, args[0], item, out, slots[0]);
    }
    std::vector<py::object> given;
    if (PyTuple_Check(item.ptr()) || PyList_Check(item.ptr())) {
      for (auto a : item) given.push_back(py::reinterpret_borrow<py::object>(a));
    } else {
      raise(PyExc_TypeError,
            "expected the arguments as a tuple, got " + std::string(Py_TYPE(item.ptr())->tp_name));
    }
    if (given.size() != args.size()) {
      raise(PyExc_TypeError, label + " takes " + std::to_string(args.size()) + " arguments, got " +
                                 std::to_string(given.size()));
    }
    for (unsigned i = 0; i < args.size(); ++i) {
      try {
        values::encode(from, *schemas, args[i], given[i], out, slots[i]);
      } catch (py::error_already_set& e) {
        // "argument 2: expected int64, got str", keeping the error's type.
        py::object type = e.type();
        const std::string text =
            "argument " + std::to_string(i + 1) + ": " + py::str(e.value()).cast<std::string>();
        PyErr_SetString(type.ptr(), text.c_str());
        throw py::error_already_set();
      }
    }
  }
};

// A task bound by name, with its types parsed.
struct PyTask {
  std::shared_ptr<Pool> pool;
  DynamicTask task;
  Arguments arguments;
  Type result;

  void encode(capnp::AnyStruct::Builder out, const py::object& item, bool star) const {
    arguments.encode(out, item, star);
  }

  py::object decode(const DynamicResult& r) const {
    PyTo to{&r};
    return values::decode(to, *arguments.schemas, result, r.tuple(), 0);
  }
};

// The results of a call; `single`: a submit/apply, whose result is the first.
struct PyFuture {
  Future<std::vector<DynamicResult>> future;
  std::shared_ptr<PyTask> task;
  bool single = false;

  // Waits with the GIL released; Ctrl-C cancels the call and raises KeyboardInterrupt.
  bool wait(std::optional<double> timeout) {
    const bool bounded = timeout.has_value();
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(bounded ? *timeout : 0.0));
    for (;;) {
      auto slice = std::chrono::duration_cast<std::chrono::milliseconds>(WAIT_SLICE);
      if (bounded) {
        slice = std::max(0ms, std::min(slice, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  deadline - std::chrono::steady_clock::now())));
      }
      bool ready;
      {
        py::gil_scoped_release release;
        ready = future.wait(slice);
      }
      if (ready) return true;
      if (PyErr_CheckSignals() != 0) {
        {
          py::gil_scoped_release release;
          future.cancel();
        }
        throw py::error_already_set();
      }
      if (bounded && std::chrono::steady_clock::now() >= deadline) return false;
    }
  }

  py::object result(std::optional<double> timeout) {
    if (!wait(timeout)) raiseError("WaitTimeout", "the result was not ready within the timeout");
    const std::vector<DynamicResult>* results;
    {
      py::gil_scoped_release release;  // decoding may rethrow; no Python here
      results = &future.get();
    }
    if (single) return task->decode(results->front());
    py::list out(results->size());
    for (std::size_t i = 0; i < results->size(); ++i) {
      out[i] = task->decode((*results)[i]);
    }
    return out;
  }
};

// imap and imap_unordered: chunks of `chunksize` items pulled from a Python iterator, at most
// `window` chunks out at once, results handed out in input order or as their chunks finish.
// Items are pulled and converted on the iterating thread, with the GIL (a value that does not
// fit raises there, before its chunk is sent); waiting is without it, in WAIT_SLICE slices so
// that Ctrl-C cancels every chunk out and raises KeyboardInterrupt. A failed chunk raises its
// error from next(); the stream goes on after it, as multiprocessing's IMapIterator does.
class PyStream {
 public:
  PyStream(std::shared_ptr<Pool> pool, std::shared_ptr<PyTask> task, py::object source,
           std::size_t chunksize, std::size_t window, bool ordered)
      : pool_(std::move(pool)),
        task_(std::move(task)),
        source_(std::move(source)),
        chunksize_(std::max<std::size_t>(1, chunksize)),
        window_(std::max<std::size_t>(1, window)),
        ordered_(ordered) {}

  py::object next() {
    for (;;) {
      if (results_ != nullptr && at_ < results_->size()) return task_->decode((*results_)[at_++]);
      results_ = nullptr;
      current_.reset();
      fill();
      if (out_.empty()) throw py::stop_iteration();
      const std::size_t i = ordered_ ? waitFront() : waitAnyOut();
      current_.emplace(std::move(out_[i]));
      out_.erase(out_.begin() + static_cast<std::ptrdiff_t>(i));
      fill();  // the workers keep busy while these results are converted
      {
        py::gil_scoped_release release;
        results_ = &current_->get();  // throws the chunk's error
      }
      at_ = 0;
    }
  }

  // Cancels every chunk still out; the stream ends.
  void close() {
    more_ = false;
    py::gil_scoped_release release;
    for (auto& f : out_) f.cancel();
    out_.clear();
  }

 private:
  using Chunk = Future<std::vector<DynamicResult>>;

  void fill() {
    while (more_ && out_.size() < window_) send();
  }

  void send() {
    std::vector<py::object> items;
    while (items.size() < chunksize_) {
      PyObject* item = PyIter_Next(source_.ptr());
      if (item == nullptr) {
        if (PyErr_Occurred() != nullptr) throw py::error_already_set();
        more_ = false;
        break;
      }
      items.push_back(py::reinterpret_steal<py::object>(item));
    }
    if (items.empty()) return;
    auto encode = [this](capnp::AnyStruct::Builder out, const py::object& item) {
      task_->encode(out, item, /*star=*/false);
    };
    out_.push_back(pool_->mapAsync(task_->task, items, encode, items.size()));
  }

  // Waits, without the GIL, until `ready()`; Ctrl-C cancels everything out and raises.
  template <typename Ready>
  void waitSliced(Ready&& ready) {
    for (;;) {
      bool done;
      {
        py::gil_scoped_release release;
        done = ready(std::chrono::duration_cast<std::chrono::milliseconds>(WAIT_SLICE));
      }
      if (done) return;
      if (PyErr_CheckSignals() != 0) {
        close();
        throw py::error_already_set();
      }
    }
  }

  std::size_t waitFront() {
    waitSliced([this](std::chrono::milliseconds slice) { return out_.front().wait(slice); });
    return 0;
  }

  // The first chunk out that is ready (usually the oldest), waiting for one if none is.
  std::size_t waitAnyOut() {
    for (std::size_t i = 0; i < out_.size(); ++i) {
      if (out_[i].ready()) return i;
    }
    std::size_t found = 0;
    waitSliced([this, &found](std::chrono::milliseconds slice) {
      auto i = plugpool::waitAny(out_, slice);
      if (i) found = *i;
      return i.has_value();
    });
    return found;
  }

  std::shared_ptr<Pool> pool_;
  std::shared_ptr<PyTask> task_;
  py::object source_;
  const std::size_t chunksize_, window_;
  const bool ordered_;
  bool more_ = true;
  std::deque<Chunk> out_;  // in input order
  std::optional<Chunk> current_;
  const std::vector<DynamicResult>* results_ = nullptr;  // current_'s, being handed out
  std::size_t at_ = 0;
};

std::shared_ptr<PyTask> bindTask(const std::shared_ptr<Pool>& pool, const std::string& plugin,
                                 const std::string& name) {
  DynamicTask task = pool->dynamicTask(plugin, name);
  for (const auto& p : pool->plugins()) {
    if (p.name != plugin) continue;
    Type result = values::parseType(task.info().resultType);
    Arguments arguments(p, task.info());
    return std::make_shared<PyTask>(
        PyTask{pool, std::move(task), std::move(arguments), std::move(result)});
  }
  throw PluginError("no plugin named \"" + plugin + "\"");  // dynamicTask found it
}

// Python's initializer and initargs: the arguments are converted by the task's declared types
// once the first worker has reported them, on the dispatcher thread, while the constructing
// thread waits without the GIL. A value that does not fit fails the constructor with its
// TypeError or OverflowError.
Initializer initializerOf(const std::string& plugin, const std::string& name, py::tuple initargs) {
  auto held = std::shared_ptr<py::tuple>(new py::tuple(std::move(initargs)), [](py::tuple* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
  return dynamicInitializer(
      plugin, name,
      [held](capnp::AnyStruct::Builder out, const PluginInfo& plugin, const TaskInfo& task) {
        py::gil_scoped_acquire gil;
        Arguments(plugin, task).encode(out, *held, /*star=*/true);
      });
}

}  // namespace

}  // namespace plugpool::python

PYBIND11_MODULE(_plugpool, m) {
  using namespace plugpool;
  using namespace plugpool::python;
  m.doc() = "The C++ half of plugpool (see plugpool/__init__.py).";
  py::register_exception_translator(translate);
  defineBuffer(m);

  py::class_<PyTask, std::shared_ptr<PyTask>>(m, "_Task")
      .def_property_readonly("plugin", [](const PyTask& t) { return t.task.plugin(); })
      .def_property_readonly("name", [](const PyTask& t) { return t.task.name(); })
      .def_property_readonly("arg_types", [](const PyTask& t) { return t.task.info().argTypes; })
      .def_property_readonly("result_type",
                             [](const PyTask& t) { return t.task.info().resultType; })
      .def_property_readonly("doc", [](const PyTask& t) { return t.task.info().doc; })
      .def_property_readonly("signature",
                             [](const PyTask& t) { return t.task.info().signature(); });

  py::class_<PyFuture, std::shared_ptr<PyFuture>>(m, "_Future")
      .def("done", [](PyFuture& f) { return f.future.ready(); })
      .def("wait", &PyFuture::wait, py::arg("timeout") = py::none())
      .def("result", &PyFuture::result, py::arg("timeout") = py::none())
      .def("successful", [](PyFuture& f) { return f.future.successful(); })
      .def("cancel",
           [](PyFuture& f) {
             py::gil_scoped_release release;
             return f.future.cancel();
           })
      .def("cancelled", [](PyFuture& f) { return f.future.cancelled(); })
      .def("add_done_callback", [](PyFuture& f, py::function fn) {
        auto pending = std::make_shared<PendingCallback>(std::move(fn));
        auto call = [pending] {
          py::gil_scoped_acquire gil;
          try {
            pending->fn();
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("plugpool done callback");
          }
        };
        f.future.then([call](const std::vector<DynamicResult>&) { call(); },
                      [call](std::exception_ptr) { call(); });
      });

  m.def("drain_callbacks", &drainCallbacks,
        "Waits until every done callback has run and let go of Python (for the exit).");

  py::class_<PyStream, std::shared_ptr<PyStream>>(m, "_Stream")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &PyStream::next)
      .def("close", &PyStream::close);

  py::class_<Pool, std::shared_ptr<Pool>>(m, "_Pool")
      .def(
          py::init([](int processes, std::vector<std::string> plugins, std::uint64_t maxTasks,
                      long long timeoutMs, unsigned crashRetries, std::uint64_t memoryBytes,
                      long long cpuSeconds, std::uint64_t openFiles, long long startTimeoutMs,
                      std::optional<std::pair<std::string, std::string>> init, py::tuple initargs) {
            Options o;
            o.workers = processes;
            o.plugins = std::move(plugins);
            o.maxTasksPerChild = maxTasks;
            o.taskTimeout = std::chrono::milliseconds(timeoutMs);
            o.crashRetries = crashRetries;
            o.limits.memoryBytes = memoryBytes;
            o.limits.cpuTime = std::chrono::seconds(cpuSeconds);
            o.limits.openFiles = openFiles;
            if (startTimeoutMs > 0) o.startTimeout = std::chrono::milliseconds(startTimeoutMs);
            if (init) o.initializer = initializerOf(init->first, init->second, initargs);
            py::gil_scoped_release release;
            // The last reference may go with the GIL held (Python's garbage collector): the
            // pool's destructor waits for its work, whose callbacks take the GIL.
            return std::shared_ptr<Pool>(new Pool(std::move(o)), [](Pool* pool) {
              if (PyGILState_Check() != 0) {
                py::gil_scoped_release unlocked;
                delete pool;
              } else {
                delete pool;
              }
            });
          }),
          py::arg("processes"), py::arg("plugins"), py::arg("max_tasks_per_child") = 0,
          py::arg("task_timeout_ms") = 0, py::arg("crash_retries") = 0, py::arg("memory_bytes") = 0,
          py::arg("cpu_seconds") = 0, py::arg("open_files") = 0, py::arg("start_timeout_ms") = 0,
          py::arg("initializer") = py::none(), py::arg("initargs") = py::tuple())
      .def("processes", [](const Pool& p) { return p.workers(); })
      .def("plugins",
           [](const Pool& p) {
             py::list out;
             for (const auto& plugin : p.plugins()) {
               py::list tasks;
               for (const auto& t : plugin.tasks) {
                 tasks.append(py::make_tuple(t.name, t.argTypes, t.resultType, t.doc));
               }
               out.append(py::make_tuple(plugin.name, plugin.path, tasks));
             }
             return out;
           })
      .def("task", [](const std::shared_ptr<Pool>& p, const std::string& plugin,
                      const std::string& name) { return bindTask(p, plugin, name); })
      .def(
          "map_async",
          [](const std::shared_ptr<Pool>& p, const std::shared_ptr<PyTask>& task,
             py::iterable items, std::size_t chunksize, bool star, bool single) {
            std::vector<py::object> all;
            for (auto item : items) all.push_back(py::reinterpret_borrow<py::object>(item));
            auto encode = [&](capnp::AnyStruct::Builder out, const py::object& item) {
              task->encode(out, item, star);
            };
            auto future = p->mapAsync(task->task, all, encode, chunksize);
            return std::make_shared<PyFuture>(PyFuture{std::move(future), task, single});
          },
          py::arg("task"), py::arg("items"), py::arg("chunksize") = 0, py::arg("star") = false,
          py::arg("single") = false)
      .def(
          "stream",
          [](const std::shared_ptr<Pool>& p, const std::shared_ptr<PyTask>& task,
             py::iterable items, std::size_t chunksize, std::size_t window, bool ordered) {
            return std::make_shared<PyStream>(p, task, py::iter(items), chunksize, window, ordered);
          },
          py::arg("task"), py::arg("items"), py::arg("chunksize"), py::arg("window"),
          py::arg("ordered"))
      .def("stats",
           [](const Pool& p) {
             const Stats s = p.stats();
             py::dict d;
             d["chunks_sent"] = s.chunksSent;
             d["items_sent"] = s.itemsSent;
             d["workers_started"] = s.workersStarted;
             d["workers_lost"] = s.workersLost;
             d["workers_retired"] = s.workersRetired;
             d["chunks_timed_out"] = s.chunksTimedOut;
             d["chunks_retried"] = s.chunksRetried;
             return d;
           })
      .def("close", [](Pool& p) { p.close(); })
      .def("join",
           [](Pool& p) {
             py::gil_scoped_release release;
             p.join();
           })
      .def(
          "shutdown",
          [](Pool& p, bool wait, bool cancel) {
            py::gil_scoped_release release;
            p.shutdown(wait, cancel);
          },
          py::arg("wait") = true, py::arg("cancel") = false)
      .def("terminate_workers",
           [](Pool& p) {
             py::gil_scoped_release release;
             p.terminateWorkers();
           })
      .def("kill_workers", [](Pool& p) {
        py::gil_scoped_release release;
        p.killWorkers();
      });
}
