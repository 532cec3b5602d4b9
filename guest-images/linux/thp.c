/*
 * thp: the Linux test guest's process with transparent huge pages (issue 4).
 *
 * Maps BUFFER_SIZE bytes of anonymous memory aligned to 2 MiB, asks for huge pages
 * (MADV_HUGEPAGE), writes every 4 KiB page (its first 8 bytes hold the page's own
 * virtual address XOR PATTERN, so the VMM can check a translation by reading the frame),
 * reads back how much of it is AnonHugePages in /proc/self/smaps, then signals the VMM
 * through its debug port (vmm/core/src/devices/debug_port.rs):
 *
 *   MARK (event 4) with the buffer size, then PARK (event 6) with the buffer address.
 *
 * PARK stops this vCPU at its OUT, with this process's CR3 loaded, until the
 * VMM resumes it; a VMM that is not interested resumes it at once. Then it exits 0 when
 * the whole buffer was backed by huge pages, 1 otherwise.
 *
 * `thp SECONDS rewrite` then, once resumed, writes every 4 KiB page of its buffer again
 * (the same values) and signals MARK (REWRITE_MARK) and PARK (the buffer address) a
 * second time: a VMM that fetched the dirty log at the first PARK finds exactly the
 * buffer's huge pages dirty at the second (tests/tests/linux.rs, dirty scans).
 *
 * `thp SECONDS` first spins for SECONDS after PARK, reading its buffer: a VMM without the
 * debug port (QEMU, in the `info tlb` comparison of guest-images/hwkvm/tlb-bench.sh) can
 * then stop the guest while this process runs, with its CR3 loaded.
 *
 * `thp SECONDS tick` spins as long, but once a second it writes the tick's number into
 * the second word of every 2 MiB page of its buffer and prints `GUESTWALK-THP tick N`;
 * at the end it checks those words still hold the last tick (`ticks verified`, else it
 * exits 4): a restored VM shows its clock, its console and its memory going on.
 *
 * `thp mark VALUE` only sends MARK with VALUE (hex) and exits: /init sends it right
 * before it reboots or crashes the guest on purpose (guestwalk.do=), so a test can time
 * the VM's end from the guest's request.
 *
 * Static, no dependencies beyond libc: gcc -static -O2 -o thp thp.c
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <time.h>

#define HUGE_PAGE (2UL << 20)
#define BUFFER_SIZE (64UL << 20)
#define PAGE 4096UL
#define PATTERN 0x6775657374776c6bULL /* "guestwlk" */

#define EVENT_PORT 0x600
#define ARG_LO_PORT 0x604
#define ARG_HI_PORT 0x608
#define EVENT_MARK 4
#define EVENT_PARK 6
#define REWRITE_MARK 0x7265777269746521ULL /* "rewrite!" */

static void send_event(uint32_t code, uint64_t argument)
{
	outl((uint32_t)argument, ARG_LO_PORT);
	outl((uint32_t)(argument >> 32), ARG_HI_PORT);
	outl(code, EVENT_PORT);
}

/* AnonHugePages (kB) of the mapping starting at `start`, or -1. */
static long anon_huge_kb(uintptr_t start)
{
	FILE *smaps = fopen("/proc/self/smaps", "r");
	char line[512];
	int in_mapping = 0;
	long kb = -1;

	if (!smaps)
		return -1;
	while (fgets(line, sizeof(line), smaps)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in_mapping = lo <= start && start < hi;
			continue;
		}
		if (in_mapping && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(smaps);
	return kb;
}

int main(int argc, char **argv)
{
	if (argc > 2 && strcmp(argv[1], "mark") == 0) {
		if (ioperm(EVENT_PORT, 12, 1) != 0) {
			perror("thp: ioperm");
			return 1;
		}
		send_event(EVENT_MARK, strtoull(argv[2], NULL, 16));
		return 0;
	}
	long linger = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
	int rewrite = argc > 2 && strcmp(argv[2], "rewrite") == 0;
	int tick = argc > 2 && strcmp(argv[2], "tick") == 0;
	size_t span = BUFFER_SIZE + HUGE_PAGE;
	char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED) {
		perror("thp: mmap");
		return 1;
	}
	uintptr_t start = ((uintptr_t)raw + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
	char *buffer = (char *)start;
	if (madvise(buffer, BUFFER_SIZE, MADV_HUGEPAGE) != 0)
		perror("thp: madvise(MADV_HUGEPAGE)");
	for (uintptr_t offset = 0; offset < BUFFER_SIZE; offset += PAGE) {
		uint64_t value = (uint64_t)(start + offset) ^ PATTERN;
		memcpy(buffer + offset, &value, sizeof(value));
	}
	long kb = anon_huge_kb(start);
	int huge = kb == (long)(BUFFER_SIZE >> 10);
	printf("GUESTWALK-THP buffer=%#lx size=%#lx AnonHugePages=%ld kB %s\n",
	       (unsigned long)start, BUFFER_SIZE, kb, huge ? "ok" : "NOT-HUGE");
	fflush(stdout);

	if (ioperm(EVENT_PORT, 12, 1) != 0) {
		perror("thp: ioperm");
		return 1;
	}
	send_event(EVENT_MARK, BUFFER_SIZE);
	send_event(EVENT_PARK, start);
	printf("GUESTWALK-THP resumed\n");
	/* What it wrote is still there (a restored VM must give it back). */
	size_t corrupt = 0;
	for (uintptr_t offset = 0; offset < BUFFER_SIZE; offset += PAGE) {
		uint64_t value;
		memcpy(&value, buffer + offset, sizeof(value));
		corrupt += value != ((uint64_t)(start + offset) ^ PATTERN);
	}
	printf("GUESTWALK-THP %s (%zu pages differ)\n", corrupt ? "CORRUPT" : "verified", corrupt);
	fflush(stdout);
	if (corrupt)
		return 3;
	if (rewrite) {
		for (uintptr_t offset = 0; offset < BUFFER_SIZE; offset += PAGE) {
			uint64_t value = (uint64_t)(start + offset) ^ PATTERN;
			memcpy(buffer + offset, &value, sizeof(value));
		}
		printf("GUESTWALK-THP rewrote %#lx bytes\n", BUFFER_SIZE);
		fflush(stdout);
		send_event(EVENT_MARK, REWRITE_MARK);
		send_event(EVENT_PARK, start);
	}
	if (linger > 0) {
		printf("GUESTWALK-THP lingering %ld s\n", linger);
		fflush(stdout);
		volatile uint64_t sum = 0;
		uint64_t ticks = 0;
		time_t last = time(NULL);
		for (time_t end = last + linger; time(NULL) < end;) {
			for (uintptr_t offset = 0; offset < BUFFER_SIZE; offset += HUGE_PAGE)
				sum += *(volatile uint64_t *)(buffer + offset);
			if (tick && time(NULL) != last) {
				last = time(NULL);
				ticks++;
				for (uintptr_t offset = 0; offset < BUFFER_SIZE; offset += HUGE_PAGE)
					*(volatile uint64_t *)(buffer + offset + 8) = ticks;
				printf("GUESTWALK-THP tick %lu\n", (unsigned long)ticks);
				fflush(stdout);
			}
		}
		if (tick) {
			size_t stale = 0;
			for (uintptr_t offset = 0; offset < BUFFER_SIZE; offset += HUGE_PAGE)
				stale += *(volatile uint64_t *)(buffer + offset + 8) != ticks;
			printf("GUESTWALK-THP ticks %s (%lu ticks, %zu stale pages)\n",
			       stale ? "CORRUPT" : "verified", (unsigned long)ticks, stale);
			fflush(stdout);
			if (stale)
				return 4;
		}
	}
	return huge ? 0 : 1;
}
