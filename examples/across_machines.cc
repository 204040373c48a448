// across_machines — the same Pool, with workers on other machines (Options::remote).
//
//   across_machines                 inside salloc or sbatch: workers are Slurm job steps
//   across_machines PREFIX...       each worker started by PREFIX (e.g. ssh node7)
//
// Outside an allocation and without a prefix, the workers are started by `env` on this
// machine, which shows the same thing over loopback TCP. Prints the sum of the squares of
// 1..100000, computed by the workers, and the machines they ran on.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <plugpool/pool.h>

int main(int argc, char** argv) {
  plugpool::Options options;
  options.workers = 4;
  options.plugins = {"examples"};
  if (argc > 1) {
    options.remote = plugpool::LaunchCommand{std::vector<std::string>(argv + 1, argv + argc)};
  } else if (std::getenv("SLURM_JOB_ID") != nullptr) {
    options.remote = plugpool::Slurm{};
  } else {
    options.remote = plugpool::LaunchCommand{{"env"}};
  }
  plugpool::Pool pool(options);

  auto square = pool.task<std::int64_t(std::int64_t)>("examples", "square");
  std::vector<std::int64_t> items(100'000);
  std::iota(items.begin(), items.end(), 1);
  const auto squares = pool.map(square, items);
  std::printf("sum of squares of 1..100000: %lld\n",
              static_cast<long long>(std::accumulate(squares.begin(), squares.end(), 0LL)));

  // Where they ran: ask often enough to hear from every worker.
  auto node = pool.task<std::string()>("examples", "node");
  std::vector<plugpool::Future<std::string>> calls;
  for (int i = 0; i < 64; ++i) calls.push_back(pool.submit(node));
  std::set<std::string> nodes;
  for (auto& call : calls) nodes.insert(call.get());
  std::printf("ran on:");
  for (const auto& n : nodes) std::printf(" %s", n.c_str());
  std::printf("\n");
}
