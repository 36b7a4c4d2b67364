// A stand-in for libnccl.so.2 under the CUDA emulation (tests/cuda_emu/run.sh builds it as
// libfakenccl.so): the entry points cnnkit's NCCL path opens, with NCCL's C ABI, so that path
// (loading, the unique id, communicator setup, the in-place float32 sum on the "device", error
// reporting) runs in tests on a machine without a GPU. Emulated device memory is host memory,
// so the processes of one communicator meet in a POSIX shared-memory segment named after the
// unique id: each all-reduce copies this rank's piece into its slot, waits for every rank,
// sums the slots in rank order (the same bits on every rank), waits again, next piece.
// A development aid, not NCCL: synchronous, one communicator per id, float32 sums only.
//
// cnnkitFakeNcclCalls() (not an NCCL symbol): how many all-reduces this process has issued, so
// the tests can see the gradients go in buckets.
//
// CNNKIT_FAKE_NCCL_TIMEOUT (seconds, default 60): how long a rank waits for the others
// before the communicator reports ncclSystemError through ncclCommGetAsyncError, as NCCL does
// when a peer is gone.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>

namespace {

constexpr int kIdBytes = 128;
std::atomic<long long> g_calls{0};
constexpr size_t kSlotFloats = size_t(1) << 16;  // 256 KiB a rank per round
constexpr char kMagic[] = "cnnkit-fake-nccl:";

struct Id {
    char internal[kIdBytes];
};

struct Header {
    std::atomic<int> arrived;
    std::atomic<int> generation;
};

struct Comm {
    int nranks = 0, rank = 0;
    Header* h = nullptr;
    float* slots = nullptr;  // nranks x kSlotFloats
    size_t bytes = 0;
    int async = 0;
    std::string last;
};

double timeout_s() {
    const char* e = std::getenv("CNNKIT_FAKE_NCCL_TIMEOUT");
    const double v = e ? std::atof(e) : 60.0;
    return v > 0 ? v : 60.0;
}

// Sense-reversing barrier over the shared header; false after the timeout.
bool barrier(Comm* c) {
    const int gen = c->h->generation.load();
    if (c->h->arrived.fetch_add(1) + 1 == c->nranks) {
        c->h->arrived.store(0);
        c->h->generation.fetch_add(1);
        return true;
    }
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(timeout_s()));
    for (int spin = 0; c->h->generation.load() == gen; ++spin) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        if (spin < 1000)
            std::this_thread::yield();
        else
            std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return true;
}

std::string shm_name(const Id& id) {
    // the token after the magic, up to the terminating zero (hex digits only)
    std::string token(id.internal + sizeof(kMagic) - 1);
    return "/cnnkit-fnccl-" + token;
}

}  // namespace

extern "C" {

int ncclGetVersion(int* version) {
    *version = 21903;
    return 0;
}

const char* ncclGetErrorString(int r) {
    switch (r) {
        case 0: return "no error";
        case 2: return "unhandled system error (fake NCCL: a peer did not arrive in time)";
        case 4: return "invalid argument (fake NCCL)";
        case 5: return "invalid usage (fake NCCL)";
    }
    return "unknown result (fake NCCL)";
}

const char* ncclGetLastError(void* comm) {
    return comm ? static_cast<Comm*>(comm)->last.c_str() : "";
}

int ncclGetUniqueId(Id* id) {
    std::memset(id, 0, sizeof(*id));
    std::random_device rd;
    char token[64];
    std::snprintf(token, sizeof(token), "%08x%08x%08x", static_cast<unsigned>(getpid()), rd(),
                  rd());
    std::snprintf(id->internal, kIdBytes, "%s%s", kMagic, token);
    return 0;
}

int ncclCommInitRank(void** out, int nranks, Id id, int rank) {
    *out = nullptr;
    if (std::strncmp(id.internal, kMagic, sizeof(kMagic) - 1) != 0) return 4;
    if (nranks < 1 || rank < 0 || rank >= nranks) return 4;
    Comm* c = new Comm();
    c->nranks = nranks;
    c->rank = rank;
    c->bytes = sizeof(Header) + 64 + size_t(nranks) * kSlotFloats * sizeof(float);
    const std::string name = shm_name(id);
    const int fd = shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(c->bytes)) != 0) {
        if (fd >= 0) close(fd);
        delete c;
        return 2;
    }
    void* p = mmap(nullptr, c->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        delete c;
        return 2;
    }
    c->h = static_cast<Header*>(p);  // zero-filled by ftruncate: a valid initial state
    c->slots = reinterpret_cast<float*>(static_cast<char*>(p) + sizeof(Header) + 64);
    const bool ok = barrier(c);  // every rank has the segment mapped
    if (rank == 0) shm_unlink(name.c_str());
    if (!ok) {
        munmap(p, c->bytes);
        delete c;
        return 2;
    }
    *out = c;
    return 0;
}

int ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int op, void* comm,
                  void* /*stream*/) {
    g_calls.fetch_add(1);
    Comm* c = static_cast<Comm*>(comm);
    if (!c) return 4;
    if (dtype != 7 || op != 0) {
        c->last = "fake NCCL: only float32 sums";
        return 4;
    }
    if (c->async) return 5;
    const float* s = static_cast<const float*>(send);
    float* r = static_cast<float*>(recv);
    for (size_t off = 0; off < count; off += kSlotFloats) {
        const size_t n = count - off < kSlotFloats ? count - off : kSlotFloats;
        std::memcpy(c->slots + size_t(c->rank) * kSlotFloats, s + off, n * sizeof(float));
        if (!barrier(c)) {
            c->async = 2;  // reported through ncclCommGetAsyncError, as NCCL does
            c->last = "fake NCCL: a peer did not reach the all-reduce in time";
            return 0;
        }
        for (size_t i = 0; i < n; ++i) {
            float v = c->slots[i];
            for (int k = 1; k < c->nranks; ++k) v += c->slots[size_t(k) * kSlotFloats + i];
            r[off + i] = v;
        }
        if (!barrier(c)) {
            c->async = 2;
            c->last = "fake NCCL: a peer did not finish the all-reduce in time";
            return 0;
        }
    }
    return 0;
}

long long cnnkitFakeNcclCalls() { return g_calls.load(); }

int ncclCommGetAsyncError(void* comm, int* err) {
    *err = comm ? static_cast<Comm*>(comm)->async : 4;
    return 0;
}

static int release(void* comm) {
    Comm* c = static_cast<Comm*>(comm);
    if (!c) return 4;
    munmap(c->h, c->bytes);
    delete c;
    return 0;
}

int ncclCommDestroy(void* comm) { return release(comm); }
int ncclCommAbort(void* comm) { return release(comm); }

}  // extern "C"
