# Runs in a pooled bash sandbox before any job exists: bash is up, its startup paid. It
# waits for a line on fd 4; by then the sandbox's init has written the job's own prelude
# (/tmp/.execbox/job.sh: the job's environment, working directory and arguments), which
# then runs the script in this same shell, as `bash main.sh args...` would.
read -r <&4 || exit 125
exec 3>&- 4<&-
unset -v REPLY
. /tmp/.execbox/job.sh
