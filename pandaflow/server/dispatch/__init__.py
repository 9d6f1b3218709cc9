"""The dispatcher process's concern: the ZeroMQ loop, who gets which jobs (allocation,
assignment, push reservations), outcomes (completion), pilots and the watchdog."""
