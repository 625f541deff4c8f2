-- Group commit of provisions (gateway/provision/batch.py): one statement writes many
-- decided provisions.  chukan_require lets such a statement refuse, as a whole, a state
-- its CTEs cannot rule out on their own (a permit consumed without its stored answer).
CREATE FUNCTION chukan_require(condition boolean, message text) RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF condition IS NOT TRUE THEN
        RAISE EXCEPTION '%', message USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN true;
END
$$;
