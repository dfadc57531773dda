-- The rotating allocator's position in each subnet: the address it handed
-- out last. Allocation checks the few addresses after it instead of reading
-- every allocated address of the subnet, and a released address is only
-- reused once allocation has come round the pools. NULL: start at the first
-- pool.
ALTER TABLE subnets ADD COLUMN next_after TEXT;
